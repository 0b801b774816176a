/*
 * test_store.c — the conformance suite of the store (service/store.h),
 * operation by operation: every refusal code, identity binding and the
 * re-enrolment after an erase, all-or-nothing enqueue, delivery order
 * (priority, then age), skips, expiry, anomalies, NotNow push debts, the
 * ledger and its latest-event read, batches and group commit, units of
 * several operations, the campaign layer's records, schema versions. Written against the
 * esim_store_* functions only, so it runs unchanged against every back end:
 *
 *   test_store [SPEC]      (or ESIM_TEST_STORE=SPEC test_store)
 *
 * SPEC is a store spec in which "{n}" stands for a name: the suite opens
 * SPEC with "{n}" replaced by one unique to this run and case (the process
 * id and a number, "4242_7") and expects an empty store there. The default
 * is "sqlite:<temp dir>/store-{n}.db"; against PostgreSQL it is a libpq URI
 * with options=-csearch_path%3Dt{n} (a fresh schema per case). Cases
 * about one back end's files, or a feature the back end does not declare,
 * are skipped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sqlite3.h>

#include "service/store.h"
#include "service/store_internal.h"
#if STORE_ASAN
#include <sanitizer/asan_interface.h>
#endif

static char dir[64];
static char spec_template[512];
static int seq;

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/esim-store-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    if (!spec_template[0])
        snprintf(spec_template, sizeof spec_template, "sqlite:%s/store-{n}.db", dir);
    return 0;
}

static bool testing_sqlite(void)
{
    return strncmp(spec_template, "sqlite:", 7) == 0 || !strstr(spec_template, "://");
}

/* The spec under test with "{n}" replaced by a fresh number. */
static void fresh_spec(char out[600])
{
    const char *at = strstr(spec_template, "{n}");
    if (!at)
        fail_msg("the store spec %s has no {n}", spec_template);
    snprintf(out, 600, "%.*s%d_%d%s", (int)(at - spec_template), spec_template, (int)getpid(),
             ++seq, at + 3);
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static store *open_fresh(char path[600])
{
    fresh_spec(path);
    store *st = NULL;
    esim_error e;
    if (esim_store_open(path, NULL, NULL, &st, &e) != ESIM_OK)
        fail_msg("open: %s", e.msg);
    return st;
}

/* A fresh store when the store under test is SQLite; NULL (and nothing
 * left open) for the tests of SQLite's own statements on another store. */
static store *open_fresh_sqlite(char path[600])
{
    store *st = open_fresh(path);
    if (strcmp(st->ops->name, "sqlite") == 0)
        return st;
    esim_store_close(st);
    return NULL;
}

static void enroll(store *st, const char *udid, const char *cert)
{
    store_authenticate_in in = {.udid = udid,
                                .topic = "com.apple.mgmt.External.t",
                                .cert_sha256 = cert,
                                .os_version = "18.1"};
    assert_int_equal(esim_store_device_authenticate(st, &in, 1000, NULL), ESIM_OK);
    assert_int_equal(esim_store_device_token_update(
                         st, udid, cert, "com.apple.mgmt.External.t",
                         "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
                         "magic", 1001, NULL),
                     ESIM_OK);
}

static void enqueue(store *st, const char *uuid, const char *udid, int priority, int64_t expires)
{
    const char *u[] = {udid};
    store_command_in c = {.uuid = uuid,
                          .request_type = "ProfileList",
                          .body = "<plist/>",
                          .body_len = 8,
                          .priority = priority,
                          .expires_at = expires};
    assert_int_equal(esim_store_command_enqueue(st, &c, u, 1, 2000, NULL), ESIM_OK);
}

/* Idle (or a result) and returns the next command's uuid ("" when none). */
static esim_err exchange(store *st, const char *udid, const char *status, const char *uuid,
                         const char *const *skip, size_t n_skip, int64_t now, char next[128],
                         store_result_outcome *outcome)
{
    store_exchange_in in = {.udid = udid,
                            .status = status,
                            .command_uuid = uuid,
                            .raw = "raw",
                            .raw_len = 3,
                            .skip_uuids = skip,
                            .n_skip = n_skip,
                            .not_now_backoff_ms = 500};
    store_exchange_out out = {0};
    esim_err rc = esim_store_device_exchange(st, &in, now, &out, NULL);
    snprintf(next, 128, "%s", out.next.present ? out.next.command_uuid : "");
    if (outcome)
        *outcome = out.outcome;
    esim_buf_free(&out.next.body);
    return rc;
}

static store_qstate state_of(store *st, const char *uuid, const char *udid)
{
    store_command_info info;
    store_queue_entry *e = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_command_get(st, uuid, NULL, 1000, &info, &e, &n, NULL), ESIM_OK);
    store_qstate s = STORE_Q_QUEUED;
    bool found = false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].udid, udid) == 0) {
            s = e[i].state;
            found = true;
        }
    esim_store_queue_entries_free(e, n);
    assert_true(found);
    return s;
}

static void test_open_specs(void **state)
{
    (void)state;
    store *st = NULL;
    esim_error e;
    /* PostgreSQL specs reach libpq: nobody listens on port 1. */
    assert_int_equal(
        esim_store_open("postgres://127.0.0.1:1/esim?connect_timeout=5", NULL, NULL, &st, &e),
        ESIM_ESTORE);
    assert_non_null(strstr(e.msg, "pgsql"));
    assert_null(st);
    assert_int_equal(
        esim_store_open("postgresql://127.0.0.1:1/esim?connect_timeout=5", NULL, NULL, &st, &e),
        ESIM_ESTORE);
    assert_int_equal(esim_store_open("mysql://x", NULL, NULL, &st, &e), ESIM_EINVAL);
    assert_int_equal(esim_store_open("sqlite:", NULL, NULL, &st, &e), ESIM_EINVAL);
    assert_int_equal(esim_store_open(NULL, NULL, NULL, &st, &e), ESIM_EINVAL);
    assert_null(st);
    char d[128];
    snprintf(d, sizeof d, "%s/datadir/nested", dir);
    assert_int_equal(esim_store_open(NULL, d, NULL, &st, &e), ESIM_OK);
    esim_store_close(st);
    esim_store_close(NULL);
}

static void test_newer_schema_refused(void **state)
{
    (void)state;
    /* It edits the database behind the store's back, in the back end's own
     * client. */
    char spec[600];
    store *st = open_fresh(spec);
    esim_store_close(st);
    if (testing_sqlite()) {
        const char *path = strncmp(spec, "sqlite:", 7) == 0 ? spec + 7 : spec;
        sqlite3 *db = NULL;
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(
            sqlite3_exec(db, "UPDATE schema_version SET version = 999", NULL, NULL, NULL),
            SQLITE_OK);
        sqlite3_close(db);
    } else {
        PGconn *c = PQconnectdb(spec);
        assert_int_equal(PQstatus(c), CONNECTION_OK);
        PGresult *r = PQexec(c, "UPDATE schema_version SET version = 999");
        assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
        PQfinish(c);
    }
    esim_error e;
    st = NULL;
    assert_int_equal(esim_store_open(spec, NULL, NULL, &st, &e), ESIM_ESTORE);
    assert_non_null(strstr(e.msg, "newer"));
    assert_null(st);
}

static void test_identity_binding_and_checkout(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    esim_error e;
    assert_int_equal(esim_store_device_token_update(st, "U1", "c1", "t", "00", "m", 1, &e),
                     ESIM_ENOTFOUND);
    enroll(st, "U1", "c1");
    store_authenticate_in other = {.udid = "U1", .topic = "t", .cert_sha256 = "c2"};
    assert_int_equal(esim_store_device_authenticate(st, &other, 5, &e), ESIM_EAUTH);
    char next[128];
    assert_int_equal(exchange(st, "U1", "Idle", NULL, NULL, 0, 10, next, NULL), ESIM_OK);
    store_exchange_in in = {.udid = "U1", .cert_sha256 = "c2", .status = "Idle"};
    store_exchange_out out = {0};
    assert_int_equal(esim_store_device_exchange(st, &in, 10, &out, &e), ESIM_EAUTH);
    assert_int_equal(esim_store_device_checkout(st, "U1", "c2", 11, &e), ESIM_EAUTH);
    enqueue(st, "cmd-a", "U1", 0, 0);
    assert_int_equal(esim_store_device_checkout(st, "U1", "c1", 12, &e), ESIM_OK);
    assert_int_equal(state_of(st, "cmd-a", "U1"), STORE_Q_CANCELED);
    assert_int_equal(exchange(st, "U1", "Idle", NULL, NULL, 0, 13, next, NULL), ESIM_ESTATE);
    store_device d;
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_false(d.enrolled);
    assert_int_equal(d.push_state, STORE_PUSH_NONE);
    store_device_brief b;
    assert_int_equal(esim_store_device_brief(st, "U1", &b, NULL), ESIM_OK);
    assert_false(b.enrolled);
    /* After CheckOut a new identity may enroll. */
    enroll(st, "U1", "c2");
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_true(d.enrolled);
    assert_string_equal(d.cert_sha256, "c2");
    assert_string_equal(d.os_version, "18.1");
    assert_string_equal(d.platform, "apple"); /* the default */
    /* The brief a campaign's creation reads: the row's columns as they are. */
    store_authenticate_in again = {.udid = "U1",
                                   .topic = "com.apple.mgmt.External.t",
                                   .cert_sha256 = "c2",
                                   .serial_number = "SER-U1",
                                   .os_version = "17.4"};
    assert_int_equal(esim_store_device_authenticate(st, &again, 14, &e), ESIM_OK);
    store_exchange_in told = {.udid = "U1",
                              .cert_sha256 = "c2",
                              .status = "Idle",
                              .eid = "89049032000000000000000000000163"};
    store_exchange_out told_out = {0};
    assert_int_equal(esim_store_device_exchange(st, &told, 15, &told_out, &e), ESIM_OK);
    esim_buf_free(&told_out.next.body);
    memset(&b, 0x5a, sizeof b);
    assert_int_equal(esim_store_device_brief(st, "U1", &b, NULL), ESIM_OK);
    assert_true(b.enrolled);
    assert_string_equal(b.serial_number, "SER-U1");
    assert_string_equal(b.os_version, "17.4");
    assert_string_equal(b.eid, "89049032000000000000000000000163");
    assert_string_equal(b.platform, "apple");
    /* A Windows device: its platform, and a WNS ChannelURI as push address. */
    store_authenticate_in win = {
        .udid = "W1", .topic = "esim-mdm", .cert_sha256 = "cw", .platform = "windows"};
    assert_int_equal(esim_store_device_authenticate(st, &win, 20, &e), ESIM_OK);
    char uri[600];
    snprintf(uri, sizeof uri, "https://wns.example.test/?token=%0500d", 7);
    assert_int_equal(esim_store_device_token_update(st, "W1", "cw", "esim-mdm", uri, "wns", 21, &e),
                     ESIM_OK);
    store_push_target t;
    assert_int_equal(esim_store_push_target(st, "W1", &t, NULL), ESIM_OK);
    assert_string_equal(t.udid, "W1");
    assert_string_equal(t.topic, "esim-mdm");
    assert_string_equal(t.platform, "windows");
    assert_string_equal(t.push_token, uri);
    assert_string_equal(t.push_magic, "wns");
    assert_true(t.enrolled);
    assert_int_equal(t.push_state, STORE_PUSH_VALID);
    /* An iPhone's, the platform by default; an unknown device's is none. */
    assert_int_equal(esim_store_push_target(st, "U1", &t, NULL), ESIM_OK);
    assert_string_equal(t.platform, "apple");
    assert_int_equal(esim_store_push_target(st, "U404", &t, &e), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_device_brief(st, "W1", &b, NULL), ESIM_OK);
    assert_true(b.enrolled);
    assert_string_equal(b.platform, "windows");
    assert_string_equal(b.eid, "");
    assert_string_equal(b.serial_number, "");
    assert_int_equal(esim_store_device_brief(st, "U404", &b, &e), ESIM_ENOTFOUND);
    assert_non_null(strstr(e.msg, "U404"));
    esim_store_close(st);
}

static void test_enqueue_all_or_nothing(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    enroll(st, "U1", NULL);
    enroll(st, "U2", NULL);
    esim_error e;
    store_command_in c = {
        .uuid = "cmd-1", .request_type = "ProfileList", .body = "<plist/>", .body_len = 8};
    const char *unknown[] = {"U1", "U9"};
    assert_int_equal(esim_store_command_enqueue(st, &c, unknown, 2, 1, &e), ESIM_ENOTFOUND);
    assert_non_null(strstr(e.msg, "U9"));
    store_command_info info;
    store_queue_entry *entries = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_command_get(st, "cmd-1", NULL, 10, &info, &entries, &n, NULL),
                     ESIM_ENOTFOUND);
    const char *twice[] = {"U1", "U1"};
    assert_int_equal(esim_store_command_enqueue(st, &c, twice, 2, 1, &e), ESIM_EINVAL);
    const char *ok[] = {"U1", "U2"};
    assert_int_equal(esim_store_command_enqueue(st, &c, ok, 2, 1, &e), ESIM_OK);
    assert_int_equal(esim_store_command_enqueue(st, &c, ok, 1, 1, &e), ESIM_EEXIST);
    assert_int_equal(esim_store_command_enqueue(st, &c, ok, 0, 1, &e), ESIM_EINVAL);
    assert_int_equal(esim_store_command_get(st, "cmd-1", NULL, 10, &info, &entries, &n, NULL),
                     ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(info.request_type, "ProfileList");
    assert_int_equal(info.devices, 2);
    assert_int_equal(info.by_state[STORE_Q_QUEUED], 2);
    esim_store_queue_entries_free(entries, n);
    /* Paged in udid order; limit 0 gives the counts alone. */
    assert_int_equal(esim_store_command_get(st, "cmd-1", NULL, 1, &info, &entries, &n, NULL),
                     ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(entries[0].udid, "U1");
    esim_store_queue_entries_free(entries, n);
    assert_int_equal(esim_store_command_get(st, "cmd-1", "U1", 1, &info, &entries, &n, NULL),
                     ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(entries[0].udid, "U2");
    esim_store_queue_entries_free(entries, n);
    assert_int_equal(esim_store_command_get(st, "cmd-1", NULL, 0, &info, &entries, &n, NULL),
                     ESIM_OK);
    assert_int_equal(n, 0);
    assert_null(entries);
    assert_int_equal(info.devices, 2);
    assert_int_equal(esim_store_device_checkout(st, "U2", NULL, 2, NULL), ESIM_OK);
    c.uuid = "cmd-2";
    assert_int_equal(esim_store_command_enqueue(st, &c, ok, 2, 1, &e), ESIM_ESTATE);
    esim_store_close(st);
}

static void test_delivery_order_skip_expiry(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    enroll(st, "U1", NULL);
    enqueue(st, "low-old", "U1", 0, 0);
    enqueue(st, "high", "U1", 5, 0);
    enqueue(st, "low-new", "U1", 0, 0);
    enqueue(st, "expiring", "U1", 9, 3000);
    char next[128];
    /* Past its expiry it is never chosen, whatever its priority. */
    assert_int_equal(exchange(st, "U1", "Idle", NULL, NULL, 0, 5000, next, NULL), ESIM_OK);
    assert_string_equal(next, "high");
    const char *skip[] = {"high"};
    assert_int_equal(exchange(st, "U1", "Idle", NULL, skip, 1, 5001, next, NULL), ESIM_OK);
    assert_string_equal(next, "low-old");
    size_t expired = 0;
    assert_int_equal(esim_store_expire(st, 5002, &expired, NULL), ESIM_OK);
    assert_int_equal(expired, 1);
    assert_int_equal(state_of(st, "expiring", "U1"), STORE_Q_EXPIRED);
    /* Sent but unanswered commands come again on the next request. */
    assert_int_equal(exchange(st, "U1", "Idle", NULL, NULL, 0, 5003, next, NULL), ESIM_OK);
    assert_string_equal(next, "high");
    assert_int_equal(exchange(st, "U1", "Acknowledged", "high", NULL, 0, 5004, next, NULL),
                     ESIM_OK);
    assert_string_equal(next, "low-old");
    assert_int_equal(exchange(st, "U1", "Error", "low-old", NULL, 0, 5005, next, NULL), ESIM_OK);
    assert_string_equal(next, "low-new");
    store_queue_entry *q = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_device_queue(st, "U1", false, &q, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    esim_store_queue_entries_free(q, n);
    assert_int_equal(esim_store_device_queue(st, "U1", true, &q, &n, NULL), ESIM_OK);
    assert_int_equal(n, 4);
    esim_store_queue_entries_free(q, n);
    esim_store_close(st);
}

static void test_anomalies_and_not_now(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    enroll(st, "U1", NULL);
    enroll(st, "U2", NULL);
    enqueue(st, "a", "U1", 0, 0);
    enqueue(st, "b", "U2", 0, 0);
    char next[128];
    store_result_outcome o;
    /* Queued but never sent: an answer is an anomaly and the reply is the next command. */
    assert_int_equal(exchange(st, "U1", "Acknowledged", "a", NULL, 0, 10, next, &o), ESIM_OK);
    assert_int_equal(o, STORE_RESULT_ANOMALY);
    assert_string_equal(next, "a");
    /* Another device's command. */
    assert_int_equal(exchange(st, "U1", "Acknowledged", "b", NULL, 0, 11, next, &o), ESIM_OK);
    assert_int_equal(o, STORE_RESULT_ANOMALY);
    assert_int_equal(state_of(st, "b", "U2"), STORE_Q_QUEUED);
    /* NotNow: counted, still deliverable, a push owed after the back-off. */
    assert_int_equal(exchange(st, "U1", "NotNow", "a", (const char *const[]){"a"}, 1, 20, next, &o),
                     ESIM_OK);
    assert_int_equal(o, STORE_RESULT_APPLIED);
    assert_string_equal(next, "");
    assert_int_equal(state_of(st, "a", "U1"), STORE_Q_NOT_NOW);
    char due[4][65];
    size_t n = 0;
    assert_int_equal(esim_store_push_due(st, 100, due, 4, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0);
    assert_int_equal(esim_store_push_due(st, 520, due, 4, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(due[0], "U1");
    assert_int_equal(esim_store_push_due(st, 600, due, 4, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0); /* the debt is paid once */
    /* A push owed directly (a Windows verification poll's wake-up): kept,
     * an earlier debt wins over a later one, handed out once when due. */
    assert_int_equal(esim_store_device_owe_push(st, "U2", 900, NULL), ESIM_OK);
    assert_int_equal(esim_store_device_owe_push(st, "U2", 950, NULL), ESIM_OK);
    assert_int_equal(esim_store_device_owe_push(st, "U2", 0, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_push_due(st, 899, due, 4, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0);
    assert_int_equal(esim_store_push_due(st, 900, due, 4, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(due[0], "U2");
    assert_int_equal(esim_store_push_due(st, 1000, due, 4, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0);
    assert_int_equal(esim_store_push_recorded(st, "U1", false, 601, NULL), ESIM_OK);
    assert_int_equal(state_of(st, "a", "U1"), STORE_Q_PUSHED);
    assert_int_equal(esim_store_push_recorded(st, "U1", true, 602, NULL), ESIM_OK);
    store_push_target t;
    assert_int_equal(esim_store_push_target(st, "U1", &t, NULL), ESIM_OK);
    assert_int_equal(t.push_state, STORE_PUSH_DEAD);
    /* A bad status is refused and changes nothing. */
    esim_error e;
    assert_int_equal(exchange(st, "U1", "Maybe", "a", NULL, 0, 30, next, NULL), ESIM_EINVAL);
    assert_int_equal(exchange(st, "U9", "Idle", NULL, NULL, 0, 30, next, NULL), ESIM_ENOTFOUND);
    (void)e;
    /* Cancel: once, then it is final. */
    assert_int_equal(esim_store_queue_cancel(st, "U1", "a", 40, NULL), ESIM_OK);
    assert_int_equal(esim_store_queue_cancel(st, "U1", "a", 41, &e), ESIM_ESTATE);
    assert_int_equal(esim_store_queue_cancel(st, "U1", "zzz", 41, &e), ESIM_ENOTFOUND);
    /* The ledger, paged. */
    store_event *ev = NULL;
    size_t nev = 0;
    assert_int_equal(esim_store_events_list(st, "U1", 0, 3, &ev, &nev, NULL), ESIM_OK);
    assert_int_equal(nev, 3);
    assert_string_equal(ev[0].kind, "authenticate");
    int64_t last = ev[2].id;
    esim_store_events_free(ev, nev);
    size_t anomalies = 0;
    assert_int_equal(esim_store_events_list(st, "U1", last, 1000, &ev, &nev, NULL), ESIM_OK);
    for (size_t i = 0; i < nev; i++) {
        assert_true(ev[i].id > last);
        if (strcmp(ev[i].kind, "anomaly") == 0) {
            anomalies++;
            assert_int_equal(ev[i].raw.len, 3);
        }
    }
    esim_store_events_free(ev, nev);
    assert_int_equal(anomalies, 2);
    store_stats ss;
    assert_int_equal(esim_store_stats(st, &ss, NULL), ESIM_OK);
    assert_int_equal(ss.devices, 2);
    assert_int_equal(ss.enrolled, 2);
    assert_int_equal(ss.reachable, 1); /* U1's token is dead */
    assert_int_equal(ss.queue_by_state[STORE_Q_CANCELED], 1);
    assert_int_equal(ss.queue_by_state[STORE_Q_QUEUED], 1);
    /* A push sent pays what the device was owed (and one owed nothing
     * stays so). */
    assert_int_equal(esim_store_device_owe_push(st, "U2", 2000, NULL), ESIM_OK);
    assert_int_equal(esim_store_push_recorded(st, "U2", false, 1500, NULL), ESIM_OK);
    assert_int_equal(esim_store_push_recorded(st, "U2", false, 1501, NULL), ESIM_OK);
    assert_int_equal(esim_store_push_due(st, 3000, due, 4, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0);
    esim_store_close(st);
}

static void test_batches(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    if (!(esim_store_features(st) & ESIM_STORE_FEATURE_BATCH)) {
        esim_store_close(st);
        skip();
    }
    enroll(st, "U1", NULL);
    /* Inside a batch each operation stays all-or-nothing on its own. */
    assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
    enqueue(st, "kept", "U1", 0, 0);
    const char *unknown[] = {"U1", "U9"};
    store_command_in c = {
        .uuid = "refused", .request_type = "ProfileList", .body = "<plist/>", .body_len = 8};
    assert_int_equal(esim_store_command_enqueue(st, &c, unknown, 2, 1, NULL), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_batch_commit(st, NULL), ESIM_OK);
    assert_int_equal(state_of(st, "kept", "U1"), STORE_Q_QUEUED);
    store_command_info info;
    store_queue_entry *e = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_command_get(st, "refused", NULL, 10, &info, &e, &n, NULL),
                     ESIM_ENOTFOUND);
    /* A rolled-back batch leaves nothing, and what follows commits alone. */
    assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
    enqueue(st, "undone", "U1", 0, 0);
    esim_store_batch_rollback(st);
    assert_int_equal(esim_store_command_get(st, "undone", NULL, 10, &info, &e, &n, NULL),
                     ESIM_ENOTFOUND);
    enqueue(st, "after", "U1", 0, 0);
    esim_store_close(st);
    st = NULL;
    assert_int_equal(esim_store_open(spec, NULL, NULL, &st, NULL), ESIM_OK);
    assert_int_equal(state_of(st, "after", "U1"), STORE_Q_QUEUED);
    esim_store_close(st);
}

/* SQLite as the store configures it (process-wide, before it initialises:
 * the store above was opened first) keeps a savepoint's upserts whole once
 * its sub-journal spills to a temporary file. SQLite 3.40.1 with
 * SQLITE_CONFIG_STMTJRNL_SPILL at 256 KiB or more (the store once set 8
 * MiB) failed the second of these operations with SQLITE_FULL and rolled
 * the whole transaction back: a 100,000-device demo's campaign lost a batch
 * in every run. Upserts of 30,000 rows, a quarter of them updating an
 * earlier row, in two savepoints of one transaction. */
static void test_sub_journal_spill(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh_sqlite(spec);
    if (!st)
        skip();
    esim_store_close(st);
    const char *file = strchr(spec, ':') ? strchr(spec, ':') + 1 : spec;
    char path[700];
    snprintf(path, sizeof path, "%s-spill", file);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
                                  "CREATE TABLE c (id INTEGER PRIMARY KEY,"
                                  " uuid TEXT NOT NULL UNIQUE, pad BLOB)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_stmt *ins = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "INSERT INTO c (uuid, pad) VALUES (?1, zeroblob(?2))"
                                        " ON CONFLICT (uuid) DO UPDATE SET pad = excluded.pad",
                                        -1, &ins, NULL),
                     SQLITE_OK);
    uint64_t x = 1, n = 0;
    assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    for (int op = 0; op < 2; op++) {
        assert_int_equal(sqlite3_exec(db, "SAVEPOINT op", NULL, NULL, NULL), SQLITE_OK);
        for (int r = 0; r < 30000; r++) {
            x = x * 6364136223846793005u + 1442695040888963407u;
            uint64_t k = (x >> 33) % 4 == 0 && n ? (x >> 20) % n : n++;
            char uuid[24];
            snprintf(uuid, sizeof uuid, "%016llx", (unsigned long long)(k * 0x9E3779B97F4A7C15u));
            sqlite3_bind_text(ins, 1, uuid, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int(ins, 2, (int)((x >> 40) % 600));
            int rc = sqlite3_step(ins);
            sqlite3_reset(ins);
            if (rc != SQLITE_DONE)
                fail_msg("operation %d, row %d: %s (%d)", op, r, sqlite3_errmsg(db), rc);
        }
        assert_int_equal(sqlite3_exec(db, "RELEASE op", NULL, NULL, NULL), SQLITE_OK);
    }
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_finalize(ins);
    sqlite3_close(db);
    char side[720];
    remove(path);
    snprintf(side, sizeof side, "%s-wal", path);
    remove(side);
    snprintf(side, sizeof side, "%s-shm", path);
    remove(side);
}

static void test_group_sync(void **state)
{
    (void)state;
    char spec[600];
    fresh_spec(spec);
    for (int mode = STORE_SYNC_GROUP; mode <= STORE_SYNC_NORMAL; mode++) {
        store_options o = {.sync = (store_sync)mode};
        store *st = NULL;
        assert_int_equal(esim_store_open(spec, NULL, &o, &st, NULL), ESIM_OK);
        bool deferred = esim_store_features(st) & ESIM_STORE_FEATURE_DEFERRED_SYNC;
        int64_t before = esim_store_commit_count(st);
        enroll(st, mode == STORE_SYNC_GROUP ? "G1" : mode == STORE_SYNC_FULL ? "F1" : "N1", NULL);
        if (deferred)
            assert_true(esim_store_commit_count(st) > before);
        else
            assert_int_equal(esim_store_commit_count(st), 0);
        assert_int_equal(esim_store_sync(st, NULL), ESIM_OK);
        esim_store_close(st);
    }
}

/* An EraseDevice handed to the device during its enrolment lets exactly one
 * new identity in, retires the erase, and starts a new enrolment. */
static void test_erase_reenrolment(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    enroll(st, "U1", "c1");
    store_command_in erase = {
        .uuid = "erase-1", .request_type = "EraseDevice", .body = "<plist/>", .body_len = 8};
    const char *u[] = {"U1"};
    assert_int_equal(esim_store_command_enqueue(st, &erase, u, 1, 2000, NULL), ESIM_OK);
    /* Queued but not yet handed over: a new identity is still refused. */
    store_authenticate_in c2 = {.udid = "U1", .topic = "t", .cert_sha256 = "c2"};
    esim_error e;
    assert_int_equal(esim_store_device_authenticate(st, &c2, 2100, &e), ESIM_EAUTH);
    assert_non_null(strstr(e.msg, "check out"));
    char next[128];
    assert_int_equal(exchange(st, "U1", "Idle", NULL, NULL, 0, 2200, next, NULL), ESIM_OK);
    assert_string_equal(next, "erase-1");
    /* The phone wipes without answering and comes back with a new identity. */
    assert_int_equal(esim_store_device_authenticate(st, &c2, 2300, &e), ESIM_OK);
    store_device d;
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_string_equal(d.cert_sha256, "c2");
    assert_int_equal(d.enrolled_at, 2300);
    /* The erase is never delivered again. */
    assert_int_equal(exchange(st, "U1", "Idle", NULL, NULL, 0, 2400, next, NULL), ESIM_OK);
    assert_string_equal(next, "");
    store_queue_entry *q = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_device_queue(st, "U1", false, &q, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0);
    esim_store_queue_entries_free(q, n);
    /* One erase, one identity: a third certificate is refused again. */
    store_authenticate_in c3 = {.udid = "U1", .topic = "t", .cert_sha256 = "c3"};
    assert_int_equal(esim_store_device_authenticate(st, &c3, 2500, &e), ESIM_EAUTH);
    static const char *const kinds[] = {"reenrolled_after_erase"};
    store_event ev;
    assert_int_equal(esim_store_event_latest(st, "U1", kinds, 1, &ev, NULL), ESIM_OK);
    assert_int_equal(ev.at, 2300);
    /* Refused steps change nothing: the device keeps c2. */
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_string_equal(d.cert_sha256, "c2");
    esim_store_close(st);
}

/* The newest event of some kinds, without paging through the ledger. */
static void test_event_latest(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    enroll(st, "U1", NULL);
    enroll(st, "U2", NULL);
    static const char *const push_kinds[] = {"pushed", "push_failed"};
    store_event ev;
    esim_error e;
    assert_int_equal(esim_store_event_latest(st, "U1", push_kinds, 2, &ev, &e), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_event_latest(st, "U1", push_kinds, 0, &ev, &e), ESIM_EINVAL);
    assert_int_equal(esim_store_push_recorded(st, "U1", false, 3000, NULL), ESIM_OK);
    assert_int_equal(esim_store_event_append(st, "push_failed", "U1", NULL, "410 Unregistered",
                                             NULL, 0, 3100, NULL),
                     ESIM_OK);
    assert_int_equal(
        esim_store_event_append(st, "webhook_failed", "U1", NULL, "x", NULL, 0, 3200, NULL),
        ESIM_OK);
    assert_int_equal(esim_store_push_recorded(st, "U2", false, 3300, NULL), ESIM_OK);
    assert_int_equal(esim_store_event_latest(st, "U1", push_kinds, 2, &ev, NULL), ESIM_OK);
    assert_string_equal(ev.kind, "push_failed");
    assert_string_equal(ev.detail, "410 Unregistered");
    assert_string_equal(ev.udid, "U1");
    assert_int_equal(ev.at, 3100);
    assert_int_equal(ev.raw.len, 0);
    assert_int_equal(esim_store_event_latest(st, "U1", push_kinds, 1, &ev, NULL), ESIM_OK);
    assert_string_equal(ev.kind, "pushed");
    assert_int_equal(ev.at, 3000);
    assert_int_equal(esim_store_event_append(st, "", "U1", NULL, NULL, NULL, 0, 1, &e),
                     ESIM_EINVAL);
    esim_store_close(st);
}

/* What the back end declares is consistent with what it does. */
/* The webhook outbox: rows in id order, paged, deleted once; a row added
 * in a batch that is undone is gone with it; rows survive a reopen. */
static void test_webhook_outbox(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    int64_t a = 0, b = 0, c = 0;
    assert_int_equal(esim_store_outbox_add(st, 7, "{}", 0, 1, &a, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_outbox_add(st, 7, "{\"a\":1}", 7, 10, &a, NULL), ESIM_OK);
    assert_int_equal(esim_store_outbox_add(st, 8, "{\"b\":2}", 7, 11, &b, NULL), ESIM_OK);
    assert_true(b > a && a > 0);
    if (esim_store_features(st) & ESIM_STORE_FEATURE_BATCH) {
        assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
        assert_int_equal(esim_store_outbox_add(st, 7, "{\"x\":0}", 7, 12, &c, NULL), ESIM_OK);
        esim_store_batch_rollback(st);
    }
    assert_int_equal(esim_store_outbox_add(st, 7, "{\"c\":3}", 7, 13, &c, NULL), ESIM_OK);
    assert_int_equal(esim_store_outbox_delete(st, b, NULL), ESIM_OK);
    assert_int_equal(esim_store_outbox_delete(st, b, NULL), ESIM_OK); /* gone: no error */
    esim_store_close(st);
    st = NULL;
    assert_int_equal(esim_store_open(spec, NULL, NULL, &st, NULL), ESIM_OK);
    store_outbox_row *rows = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_outbox_list(st, 0, 1, &rows, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_true(rows[0].id == a && rows[0].url_key == 7 && rows[0].created_at == 10);
    assert_int_equal(rows[0].body.len, 7);
    assert_memory_equal(rows[0].body.data, "{\"a\":1}", 7);
    esim_store_outbox_free(rows, n);
    assert_int_equal(esim_store_outbox_list(st, a, 10, &rows, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_true(rows[0].id == c);
    assert_memory_equal(rows[0].body.data, "{\"c\":3}", 7);
    esim_store_outbox_free(rows, n);
    /* Several rows at once (PostgreSQL: one statement), those gone no
     * error; a claimed row too, its claim written with it. */
    int64_t d = 0, e = 0, ids[4];
    assert_int_equal(esim_store_outbox_add(st, 7, "{\"d\":4}", 7, 14, &d, NULL), ESIM_OK);
    assert_int_equal(esim_store_outbox_add_claimed(st, 7, "{\"e\":5}", 7, "A", 60000, 15, &e, NULL),
                     ESIM_OK);
    assert_int_equal(
        esim_store_outbox_add_claimed(st, 7, "{\"e\":5}", 7, NULL, 60000, 15, NULL, NULL),
        ESIM_EINVAL);
    ids[0] = a;
    ids[1] = b; /* gone */
    ids[2] = d;
    ids[3] = e;
    assert_int_equal(esim_store_outbox_delete_ids(st, NULL, 2, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_outbox_delete_ids(st, ids, 0, NULL), ESIM_OK);
    assert_int_equal(esim_store_outbox_delete_ids(st, ids, 4, NULL), ESIM_OK);
    assert_int_equal(esim_store_outbox_list(st, 0, 10, &rows, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_true(rows[0].id == c);
    esim_store_outbox_free(rows, n);
    esim_store_close(st);
}

/* IoT devices: registration (once; a polled EID becomes registered), polls
 * of unknown EIDs kept, counters strictly increasing and kept over a
 * reopen, the certificate and state, refusals that change nothing; and the
 * packages with their DER, listed by EID and by command. */
/* The eIM relay's look-ups: the SM-DP+ of a delivered download trigger
 * (kept through later puts that name none), by EID and pending or not;
 * relay sessions with their expiry. */
static void test_iot_relay(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    char e1[ESIM_EID_LEN + 1] = "89049032000000000000000000000300";
    char e2[ESIM_EID_LEN + 1] = "89049032000000000000000000000400";
    assert_int_equal(esim_eid_set_check_digits(e1, NULL), ESIM_OK);
    assert_int_equal(esim_eid_set_check_digits(e2, NULL), ESIM_OK);
    bool found = true;
    assert_int_equal(esim_store_iot_trigger_find(st, "smdp.example:443", "", false, &found, NULL),
                     ESIM_OK);
    assert_false(found);
    store_iot_package p = {0};
    snprintf(p.command_uuid, sizeof p.command_uuid, "DL-1");
    snprintf(p.eid, sizeof p.eid, "%s", e1);
    snprintf(p.kind, sizeof p.kind, "download");
    snprintf(p.state, sizeof p.state, "queued");
    assert_int_equal(esim_store_iot_package_put(st, &p, 40, NULL), ESIM_OK);
    assert_int_equal(esim_store_iot_trigger_find(st, "smdp.example:443", "", false, &found, NULL),
                     ESIM_OK);
    assert_false(found); /* not delivered: no address yet */
    snprintf(p.state, sizeof p.state, "sent");
    snprintf(p.smdp, sizeof p.smdp, "smdp.example:443");
    assert_int_equal(esim_store_iot_package_put(st, &p, 41, NULL), ESIM_OK);
    struct {
        const char *smdp, *eid;
        bool pending, want;
    } cases[] = {
        {"smdp.example:443", "", true, true},    {"smdp.example:443", e1, true, true},
        {"smdp.example:443", e2, true, false},   {"smdp.example:8443", "", false, false},
        {"other.example:443", e1, false, false},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        assert_int_equal(esim_store_iot_trigger_find(st, cases[k].smdp, cases[k].eid,
                                                     cases[k].pending, &found, NULL),
                         ESIM_OK);
        assert_int_equal(found, cases[k].want);
    }
    /* The result came: no longer pending, still named; a put without an
     * address keeps it. */
    snprintf(p.state, sizeof p.state, "done");
    p.smdp[0] = '\0';
    assert_int_equal(esim_store_iot_package_put(st, &p, 42, NULL), ESIM_OK);
    assert_int_equal(esim_store_iot_trigger_find(st, "smdp.example:443", e1, true, &found, NULL),
                     ESIM_OK);
    assert_false(found);
    assert_int_equal(esim_store_iot_trigger_find(st, "smdp.example:443", e1, false, &found, NULL),
                     ESIM_OK);
    assert_true(found);
    store_iot_package *list = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_iot_packages(st, e1, "DL-1", 1, &list, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].smdp, "smdp.example:443");
    esim_store_iot_packages_free(list, n);

    store_relay_session rs = {.txid = "0A0B", .smdp = "smdp.example", .created_ms = 100};
    store_relay_session got;
    assert_int_equal(esim_store_relay_session_get(st, "0A0B", &got, NULL), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_relay_session_put(st, &rs, 0, NULL), ESIM_OK);
    snprintf(rs.eid, sizeof rs.eid, "%s", e1);
    assert_int_equal(esim_store_relay_session_put(st, &rs, 0, NULL), ESIM_OK);
    assert_int_equal(esim_store_relay_session_get(st, "0A0B", &got, NULL), ESIM_OK);
    assert_string_equal(got.smdp, "smdp.example");
    assert_string_equal(got.eid, e1);
    assert_int_equal(got.created_ms, 100);
    store_relay_session later = {.txid = "0C", .smdp = "b.example:8443", .created_ms = 200};
    assert_int_equal(esim_store_relay_session_put(st, &later, 150, NULL),
                     ESIM_OK); /* expires 0A0B */
    assert_int_equal(esim_store_relay_session_get(st, "0A0B", &got, NULL), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_relay_session_drop(st, "0C", NULL), ESIM_OK);
    assert_int_equal(esim_store_relay_session_get(st, "0C", &got, NULL), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_relay_session_drop(st, "0C", NULL), ESIM_OK);
    rs.smdp[0] = '\0';
    assert_int_equal(esim_store_relay_session_put(st, &rs, 0, NULL), ESIM_EINVAL);
    esim_store_close(st);
}

/* A device's operation from a second handle (another instance, or another
 * worker of the pool). OP_IOT_POLL is an EID's poll: |udid| holds the EID,
 * and |iot_state| the state of the record the poll returned. */
typedef enum { OP_IDLE, OP_PUSHED, OP_RETIRE, OP_CHECKOUT, OP_IOT_POLL } device_op_kind;

typedef struct {
    const char *spec, *udid, *cert;
    device_op_kind kind;
    esim_err rc;
    char next[128];
    char iot_state[16];
    atomic_int finished;
} device_op;

static void *device_op_main(void *arg)
{
    device_op *o = arg;
    store *other = NULL;
    o->rc = esim_store_open(o->spec, NULL, NULL, &other, NULL);
    if (o->rc == ESIM_OK) {
        switch (o->kind) {
        case OP_IDLE:
            o->rc = exchange(other, o->udid, "Idle", NULL, NULL, 0, 5000, o->next, NULL);
            break;
        case OP_PUSHED:
            o->rc = esim_store_push_recorded(other, o->udid, false, 5000, NULL);
            break;
        case OP_RETIRE:
            o->rc = esim_store_device_retire(other, o->udid, NULL, 5000, NULL);
            break;
        case OP_CHECKOUT:
            o->rc = esim_store_device_checkout(other, o->udid, o->cert, 5000, NULL);
            break;
        case OP_IOT_POLL: {
            store_iot_device d = {0};
            o->rc = esim_store_iot_poll(other, o->udid, 2000, &d, NULL);
            snprintf(o->iot_state, sizeof o->iot_state, "%s", d.state);
            esim_buf_free(&d.euicc_cert);
            break;
        }
        }
        esim_store_close(other);
    }
    atomic_store(&o->finished, 1);
    return NULL;
}

/* Until |watch| sees a statement on |table| (a word, or a regular
 * expression of words) waiting on a lock (true), or |o| finished first or
 * ~10 s passed (false). */
static bool op_waits_on(PGconn *watch, const char *table, device_op *o)
{
    char q[300];
    snprintf(q, sizeof q,
             "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
             "query ~ '\\m%s\\M'",
             table);
    for (int i = 0; i < 500 && !atomic_load(&o->finished); i++) {
        PGresult *r = PQexec(watch, q);
        bool waits = PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) > 0;
        PQclear(r);
        if (waits)
            return true;
        usleep(20000);
    }
    return false;
}

/* An EID's first poll while its registration, in a unit still open on
 * another instance, has written its record: the poll waits for the unit,
 * then records itself on the registered record, instead of writing an
 * "unregistered" one over it once the registration commits (the poll had
 * found no record; the eIM then never sent the device anything). */
static void test_iot_poll_waits_for_registration(void **state)
{
    (void)state;
    if (testing_sqlite())
        skip(); /* one writer at a time */
    char spec[600];
    store *st = open_fresh(spec);
    char eid[ESIM_EID_LEN + 1] = "89049032000000000000000000000300";
    assert_int_equal(esim_eid_set_check_digits(eid, NULL), ESIM_OK);
    PGconn *watch = PQconnectdb(spec);
    assert_int_equal(PQstatus(watch), CONNECTION_OK);
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    bool created = false;
    assert_int_equal(esim_store_iot_register(st, eid, 7, 0, 1000, &created, NULL), ESIM_OK);
    device_op p = {.spec = spec, .udid = eid, .kind = OP_IOT_POLL};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, device_op_main, &p), 0);
    /* A statement on iot_devices, or the lock on an EID without a record. */
    bool waited = op_waits_on(watch, "(iot_devices|pg_advisory_xact_lock\\(6909812)", &p);
    esim_err end = esim_store_unit_end(st, true, NULL);
    pthread_join(t, NULL);
    PQfinish(watch);
    assert_true(waited);
    assert_int_equal(end, ESIM_OK);
    assert_int_equal(p.rc, ESIM_OK);
    assert_string_equal(p.iot_state, "registered");
    store_iot_device d = {0};
    assert_int_equal(esim_store_iot_get(st, eid, &d, NULL), ESIM_OK);
    assert_string_equal(d.state, "registered");
    assert_int_equal(d.association_token, 7);
    assert_int_equal(d.registered_ms, 1000);
    assert_int_equal(d.last_poll_ms, 2000);
    esim_buf_free(&d.euicc_cert);
    esim_store_close(st);
}

static void sql_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType t = PQresultStatus(r);
    if (t != PGRES_COMMAND_OK && t != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

/* A command request while another transaction holds the device's queue
 * entry (a push being recorded marks the entry pushed, as its APNs answer
 * comes back just when the woken device checks in): the request waits for
 * that transaction and hands the command out. It passed over the entry
 * (FOR UPDATE SKIP LOCKED) and answered the device with nothing; the
 * device, seen since its push, was not pushed again, and its campaign
 * waited on it until it expired (campaign_demo_instances under load). Then
 * the lock order that keeps that wait free of deadlocks: a push being
 * recorded, a retirement and a CheckOut wait for the device's row (held
 * here as a command request holds it before it chooses its entry) holding
 * none of its entries, for which the request would otherwise wait in turn. */
static void test_checkin_waits_for_a_held_entry(void **state)
{
    (void)state;
    if (testing_sqlite())
        skip(); /* one writer at a time */
    char spec[600];
    store *st = open_fresh(spec);
    enroll(st, "U1", "c1");
    enqueue(st, "cmd-held", "U1", 0, 0);
    PGconn *locker = PQconnectdb(spec), *watch = PQconnectdb(spec);
    assert_int_equal(PQstatus(locker), CONNECTION_OK);
    assert_int_equal(PQstatus(watch), CONNECTION_OK);
    sql_ok(locker, "BEGIN");
    sql_ok(locker, "UPDATE queue SET state = 'pushed', pushed_at = 4000 WHERE udid = 'U1' AND "
                   "active = 1");
    device_op idle = {.spec = spec, .udid = "U1", .kind = OP_IDLE};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, device_op_main, &idle), 0);
    bool waited = op_waits_on(watch, "queue", &idle);
    sql_ok(locker, "COMMIT");
    pthread_join(t, NULL);
    if (!waited)
        fail_msg("the request did not wait for the held entry: answered '%s'", idle.next);
    assert_int_equal(idle.rc, ESIM_OK);
    assert_string_equal(idle.next, "cmd-held");
    assert_int_equal(state_of(st, "cmd-held", "U1"), STORE_Q_SENT);

    /* The device's row first. */
    enroll(st, "U2", "c2");
    enroll(st, "U3", "c3");
    enqueue(st, "cmd-2", "U1", 0, 0);
    enqueue(st, "cmd-3", "U2", 0, 0);
    enqueue(st, "cmd-4", "U3", 0, 0);
    const device_op ops[] = {{.udid = "U1", .kind = OP_PUSHED},
                             {.udid = "U2", .kind = OP_RETIRE},
                             {.udid = "U3", .cert = "c3", .kind = OP_CHECKOUT}};
    for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
        char sql[200];
        sql_ok(locker, "BEGIN");
        snprintf(sql, sizeof sql, "UPDATE devices SET last_seen_at = 4500 WHERE udid = '%s'",
                 ops[k].udid);
        sql_ok(locker, sql);
        device_op o = ops[k];
        o.spec = spec;
        assert_int_equal(pthread_create(&t, NULL, device_op_main, &o), 0);
        waited = op_waits_on(watch, "devices", &o);
        snprintf(sql, sizeof sql,
                 "SELECT id FROM queue WHERE udid = '%s' AND active = 1 FOR UPDATE NOWAIT",
                 ops[k].udid);
        PGresult *r = PQexec(locker, sql);
        bool entries_free = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0;
        PQclear(r);
        sql_ok(locker, entries_free ? "COMMIT" : "ROLLBACK");
        pthread_join(t, NULL);
        if (!waited || !entries_free)
            fail_msg("operation %zu: %s", k,
                     !waited ? "did not wait for the device's row"
                             : "held the device's entries while it waited for its row");
        assert_int_equal(o.rc, ESIM_OK);
    }
    assert_int_equal(state_of(st, "cmd-2", "U1"), STORE_Q_PUSHED);
    assert_int_equal(state_of(st, "cmd-3", "U2"), STORE_Q_CANCELED);
    assert_int_equal(state_of(st, "cmd-4", "U3"), STORE_Q_CANCELED);
    PQfinish(locker);
    PQfinish(watch);
    esim_store_close(st);
}

/* One package of the eIM (test_iot_reads_use_indexes). */
static void iot_pkg(store *st, const char *uuid, const char *eid, const char *kind,
                    const char *state, const char *smdp)
{
    store_iot_package p = {0};
    snprintf(p.command_uuid, sizeof p.command_uuid, "%s", uuid);
    snprintf(p.eid, sizeof p.eid, "%s", eid);
    snprintf(p.kind, sizeof p.kind, "%s", kind);
    snprintf(p.state, sizeof p.state, "%s", state);
    snprintf(p.smdp, sizeof p.smdp, "%s", smdp);
    uint8_t der[300];
    memset(der, 0xA5, sizeof der);
    assert_int_equal(esim_buf_append(&p.request, der, sizeof der), ESIM_OK);
    assert_int_equal(esim_store_iot_package_put(st, &p, 40, NULL), ESIM_OK);
    esim_buf_free(&p.request);
}

/* PostgreSQL: the generic plan (the one a prepared statement ends up
 * with) of every statement the store prepared that reads iot_packages
 * finds its rows by an index condition and scans no table whole. */
static void pg_iot_plans_use_indexes(store *st)
{
    PGconn *c = store_pgsql_conn(st);
    /* With the table's statistics, as autovacuum would make them any time. */
    PGresult *r = PQexec(c, "ANALYZE iot_packages");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexec(c, "SET plan_cache_mode = force_generic_plan");
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    r = PQexec(c, "SELECT name, cardinality(parameter_types), statement"
                  " FROM pg_prepared_statements"
                  " WHERE statement LIKE 'SELECT %FROM iot_packages%' ORDER BY name");
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    int n = PQntuples(r);
    assert_true(n >= 6); /* the three listings and the three trigger look-ups */
    for (int i = 0; i < n; i++) {
        char sql[256];
        int params = atoi(PQgetvalue(r, i, 1));
        int at = snprintf(sql, sizeof sql, "EXPLAIN EXECUTE %s(", PQgetvalue(r, i, 0));
        for (int k = 0; k < params; k++)
            at += snprintf(sql + at, sizeof sql - (size_t)at, "%s'1'", k ? ", " : "");
        snprintf(sql + at, sizeof sql - (size_t)at, ")");
        PGresult *plan = PQexec(c, sql);
        assert_int_equal(PQresultStatus(plan), PGRES_TUPLES_OK);
        char text[4096] = "";
        size_t len = 0;
        for (int k = 0; k < PQntuples(plan); k++)
            len += (size_t)snprintf(text + len, sizeof text - len, "%s\n", PQgetvalue(plan, k, 0));
        PQclear(plan);
        if (strstr(text, "Seq Scan") || !strstr(text, "Index Cond"))
            fail_msg("%s\n%s", PQgetvalue(r, i, 2), text);
    }
    PQclear(r);
    r = PQexec(c, "RESET plan_cache_mode");
    PQclear(r);
}

/* The eIM's reads of its packages (by EID, by EID and command, by command;
 * the relay's trigger look-up with and without an EID, pending or not)
 * among many packages of other devices: the same rows in the same order
 * as ever, each found by an index (SQLite steps through no full-table
 * scan; PostgreSQL's generic plans have an index condition). */
static void test_iot_reads_use_indexes(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    char e1[ESIM_EID_LEN + 1] = "89049032000000000000000000000500";
    char e2[ESIM_EID_LEN + 1] = "89049032000000000000000000000600";
    char other[ESIM_EID_LEN + 1];
    assert_int_equal(esim_eid_set_check_digits(e1, NULL), ESIM_OK);
    assert_int_equal(esim_eid_set_check_digits(e2, NULL), ESIM_OK);
    const char *dp = "smdp.example:443", *dp2 = "other.example:443";
    char uuid[64];
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    for (int i = 0; i < 400; i++) {
        snprintf(other, sizeof other, "890490320000000000000001%06u00", (unsigned)i % 1000000u);
        assert_int_equal(esim_eid_set_check_digits(other, NULL), ESIM_OK);
        snprintf(uuid, sizeof uuid, "DL-%d", i);
        iot_pkg(st, uuid, other, "download", "done", i % 2 ? dp : dp2);
        snprintf(uuid, sizeof uuid, "EN-%d", i);
        iot_pkg(st, uuid, other, "psmo", "done", "");
        if (i < 3)
            iot_pkg(st, "SHARED", other, "psmo", "sent", "");
    }
    iot_pkg(st, "T-1", e1, "download", "sent", dp);
    iot_pkg(st, "T-2", e1, "psmo", "done", "");
    iot_pkg(st, "SHARED", e1, "psmo", "sent", "");
    iot_pkg(st, "T-3", e1, "eco", "sent", "");
    iot_pkg(st, "T-4", e2, "download", "done", dp);
    iot_pkg(st, "SHARED", e2, "psmo", "queued", "");
    assert_int_equal(esim_store_unit_end(st, true, NULL), ESIM_OK);
    bool sqlite = strcmp(st->ops->name, "sqlite") == 0;
    uint64_t scans = sqlite ? store_sqlite_fullscan_steps(st) : 0;

    struct {
        const char *eid, *uuid;
        size_t limit;
        const char *want; /* "uuid/eid-tag ...", newest first */
    } lists[] = {
        {e1, NULL, 10, "T-3/1 SHARED/1 T-2/1 T-1/1"},
        {e1, NULL, 2, "T-3/1 SHARED/1"},
        {e2, "", 10, "SHARED/2 T-4/2"},
        {e1, "T-3", 1, "T-3/1"},
        {e1, "SHARED", 5, "SHARED/1"},
        {e2, "T-1", 5, ""},
        {NULL, "SHARED", 10, "SHARED/2 SHARED/1 SHARED/o SHARED/o SHARED/o"},
        {"", "SHARED", 3, "SHARED/2 SHARED/1 SHARED/o"},
        {NULL, "T-9", 3, ""},
    };
    for (size_t k = 0; k < sizeof lists / sizeof *lists; k++) {
        store_iot_package *p = NULL;
        size_t n = 0;
        assert_int_equal(
            esim_store_iot_packages(st, lists[k].eid, lists[k].uuid, lists[k].limit, &p, &n, NULL),
            ESIM_OK);
        char got[256] = "";
        size_t len = 0;
        for (size_t i = 0; i < n; i++) {
            const char *tag = strcmp(p[i].eid, e1) == 0   ? "1"
                              : strcmp(p[i].eid, e2) == 0 ? "2"
                                                          : "o";
            len += (size_t)snprintf(got + len, sizeof got - len, "%s%s/%s", i ? " " : "",
                                    p[i].command_uuid, tag);
            if (strcmp(p[i].command_uuid, "T-1") == 0) {
                assert_string_equal(p[i].smdp, dp);
                assert_int_equal(p[i].request.len, 300);
            }
        }
        esim_store_iot_packages_free(p, n);
        assert_string_equal(got, lists[k].want);
    }
    struct {
        const char *smdp, *eid;
        bool pending, want;
    } finds[] = {
        {dp, e1, true, true},
        {dp, e1, false, true},
        {dp, e2, true, false},
        {dp, e2, false, true},
        {dp, "", true, true},
        {dp, "", false, true},
        {dp2, "", true, false},
        {dp2, "", false, true},
        {dp2, e1, false, false},
        {"none.example:443", "", false, false},
        {"none.example:443", e1, false, false},
    };
    for (size_t k = 0; k < sizeof finds / sizeof *finds; k++) {
        bool found = !finds[k].want;
        assert_int_equal(esim_store_iot_trigger_find(st, finds[k].smdp, finds[k].eid,
                                                     finds[k].pending, &found, NULL),
                         ESIM_OK);
        if (found != finds[k].want)
            fail_msg("trigger_find(%s, %s, %d): %d", finds[k].smdp, finds[k].eid, finds[k].pending,
                     found);
    }
    if (sqlite)
        assert_int_equal(store_sqlite_fullscan_steps(st) - scans, 0);
    else if (strcmp(st->ops->name, "pgsql") == 0)
        pg_iot_plans_use_indexes(st);
    esim_store_close(st);
}

static void test_iot_devices_and_packages(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    char e1[ESIM_EID_LEN + 1] = "89049032000000000000000000000100";
    char e2[ESIM_EID_LEN + 1] = "89049032000000000000000000000200";
    assert_int_equal(esim_eid_set_check_digits(e1, NULL), ESIM_OK);
    assert_int_equal(esim_eid_set_check_digits(e2, NULL), ESIM_OK);
    bool created = false;
    esim_error e = {0};
    assert_int_equal(esim_store_iot_register(st, "123", 1, 0, 10, &created, &e), ESIM_EINVAL);
    assert_int_equal(esim_store_iot_register(st, e1, 0, 0, 10, &created, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_iot_register(st, e1, 5, -1, 10, &created, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_iot_register(st, e1, 5, 3, 10, &created, NULL), ESIM_OK);
    assert_true(created);
    assert_int_equal(esim_store_iot_register(st, e1, 6, 0, 11, &created, NULL), ESIM_EEXIST);
    /* An unknown EID polls: kept as unregistered, gets no counter. */
    store_iot_device d;
    assert_int_equal(esim_store_iot_poll(st, e2, 20, &d, NULL), ESIM_OK);
    assert_string_equal(d.state, "unregistered");
    assert_int_equal(d.last_poll_ms, 20);
    esim_buf_free(&d.euicc_cert);
    int64_t c = 0;
    assert_int_equal(esim_store_iot_counter_next(st, e2, 21, &c, NULL), ESIM_ESTATE);
    assert_int_equal(esim_store_iot_register(st, e2, 9, 0, 22, &created, NULL), ESIM_OK);
    assert_false(created);
    assert_int_equal(esim_store_iot_counter_next(st, e1, 30, &c, NULL), ESIM_OK);
    assert_int_equal(c, 4);
    assert_int_equal(esim_store_iot_counter_next(st, e1, 31, &c, NULL), ESIM_OK);
    assert_int_equal(c, 5);
    assert_int_equal(esim_store_iot_update(st, e1, "gone", NULL, 0, NULL, 32, NULL), ESIM_EINVAL);
    assert_int_equal(
        esim_store_iot_update(st, e1, "ready", "\x30\x03\x02\x01\x01", 5, "", 33, NULL), ESIM_OK);
    /* A counter taken in a unit that is undone is not taken. */
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    assert_int_equal(esim_store_iot_counter_next(st, e1, 34, &c, NULL), ESIM_OK);
    assert_int_equal(esim_store_unit_end(st, false, NULL), ESIM_OK);

    store_iot_package p = {0};
    snprintf(p.command_uuid, sizeof p.command_uuid, "CMD-1");
    snprintf(p.eid, sizeof p.eid, "%s", e1);
    snprintf(p.kind, sizeof p.kind, "psmo");
    snprintf(p.state, sizeof p.state, "queued");
    snprintf(p.summary, sizeof p.summary, "enable 8944...");
    assert_int_equal(esim_store_iot_package_put(st, &p, 40, NULL), ESIM_OK);
    snprintf(p.state, sizeof p.state, "sent");
    p.counter = 5;
    p.sent_ms = 41;
    assert_int_equal(esim_buf_append(&p.request, "\xBF\x51\x00", 3), ESIM_OK);
    assert_int_equal(esim_store_iot_package_put(st, &p, 41, NULL), ESIM_OK);
    esim_buf_free(&p.request);
    snprintf(p.command_uuid, sizeof p.command_uuid, "CMD-2");
    snprintf(p.state, sizeof p.state, "queued");
    p.counter = 0;
    assert_int_equal(esim_store_iot_package_put(st, &p, 42, NULL), ESIM_OK);
    p.kind[0] = '\0';
    assert_int_equal(esim_store_iot_package_put(st, &p, 42, NULL), ESIM_EINVAL);
    esim_store_close(st);

    st = NULL;
    assert_int_equal(esim_store_open(spec, NULL, NULL, &st, NULL), ESIM_OK);
    assert_int_equal(esim_store_iot_get(st, e1, &d, NULL), ESIM_OK);
    assert_string_equal(d.state, "ready");
    assert_int_equal(d.association_token, 5);
    assert_int_equal(d.counter, 5);
    assert_int_equal(d.registered_ms, 10);
    assert_int_equal(d.euicc_cert.len, 5);
    esim_buf_free(&d.euicc_cert);
    assert_int_equal(esim_store_iot_counter_next(st, e1, 50, &c, NULL), ESIM_OK);
    assert_int_equal(c, 6);
    store_iot_device *list = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_iot_list(st, "", 10, &list, &n, NULL), ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].eid, e1);
    assert_string_equal(list[1].state, "registered");
    free(list);
    assert_int_equal(esim_store_iot_list(st, e1, 10, &list, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    free(list);

    store_iot_package *pk = NULL;
    assert_int_equal(esim_store_iot_packages(st, NULL, NULL, 10, &pk, &n, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_iot_packages(st, e1, NULL, 10, &pk, &n, NULL), ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(pk[0].command_uuid, "CMD-2"); /* newest first */
    assert_string_equal(pk[1].state, "sent");
    assert_int_equal(pk[1].counter, 5);
    assert_int_equal(pk[1].created_ms, 40);
    assert_int_equal(pk[1].request.len, 3);
    assert_null(pk[1].result_words);
    esim_store_iot_packages_free(pk, n);
    assert_int_equal(esim_store_iot_packages(st, NULL, "CMD-1", 10, &pk, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(pk[0].summary, "enable 8944...");
    esim_store_iot_packages_free(pk, n);
    esim_store_close(st);
}

/* Several instances: leases, notifications, the shared outbox. Two handles
 * on one store stand for two instances. */
static void on_note(const char *topic, const char *payload, void *arg)
{
    char *got = arg;
    size_t len = strlen(got);
    snprintf(got + len, 256 - len, "%s=%s;", topic, payload);
}

/* Reads |l| until |got| holds |want| or 3 s passed. */
static bool heard(store_listener *l, char *got, const char *want)
{
    for (int64_t until = esim_mono_ms() + 3000; esim_mono_ms() < until;) {
        struct pollfd p = {.fd = esim_store_listener_fd(l), .events = POLLIN};
        poll(&p, 1, 50);
        assert_int_equal(esim_store_listener_read(l, on_note, got, NULL), ESIM_OK);
        if (strstr(got, want))
            return true;
    }
    return false;
}

static void test_instances(void **state)
{
    (void)state;
    char spec[600];
    store *a = open_fresh(spec);
    bool shared = (esim_store_features(a) & ESIM_STORE_FEATURE_SHARED) != 0;
    bool held = false;
    char holder[64];
    assert_int_equal(esim_store_lease(a, "campaign:x", "", 100, &held, holder, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_lease(a, "campaign:x", "A", 0, &held, holder, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_notify(a, "Bad-Topic", "x", NULL), ESIM_EINVAL);
    store_listener *l = NULL;
    if (!shared) {
        /* One instance: it holds every lease, and nobody listens. */
        assert_int_equal(esim_store_lease(a, "campaign:x", "A", 100, &held, holder, NULL), ESIM_OK);
        assert_true(held);
        assert_int_equal(esim_store_lease(a, "campaign:x", "B", 100, &held, holder, NULL), ESIM_OK);
        assert_true(held);
        assert_int_equal(esim_store_notify(a, "t", "p", NULL), ESIM_OK);
        assert_int_equal(esim_store_listen(a, &l, NULL), ESIM_ESTATE);
        esim_store_close(a);
        return;
    }
    store *b = NULL;
    assert_int_equal(esim_store_open(spec, NULL, NULL, &b, NULL), ESIM_OK);
    /* A lease: one holder, renewed by it, taken over once it lapsed. */
    assert_int_equal(esim_store_lease(a, "campaign:x", "A", 300, &held, holder, NULL), ESIM_OK);
    assert_true(held);
    assert_string_equal(holder, "A");
    assert_int_equal(esim_store_lease(b, "campaign:x", "B", 300, &held, holder, NULL), ESIM_OK);
    assert_false(held);
    assert_string_equal(holder, "A");
    assert_int_equal(esim_store_lease(a, "campaign:x", "A", 300, &held, holder, NULL), ESIM_OK);
    assert_true(held);
    usleep(400 * 1000);
    assert_int_equal(esim_store_lease(b, "campaign:x", "B", 300, &held, holder, NULL), ESIM_OK);
    assert_true(held);
    assert_int_equal(esim_store_lease(a, "campaign:x", "A", 300, &held, holder, NULL), ESIM_OK);
    assert_false(held);
    assert_string_equal(holder, "B");
    /* Released: free for the next at once; a release by a non-holder does nothing. */
    assert_int_equal(esim_store_lease_release(a, "campaign:x", "A", NULL), ESIM_OK);
    assert_int_equal(esim_store_lease_release(b, "campaign:x", "B", NULL), ESIM_OK);
    assert_int_equal(esim_store_lease(a, "campaign:x", "A", 60000, &held, holder, NULL), ESIM_OK);
    assert_true(held);

    /* Notifications reach a listener on another connection; inside a unit
     * only when it commits. */
    assert_int_equal(esim_store_listen(b, &l, NULL), ESIM_OK);
    char got[256] = "";
    assert_int_equal(esim_store_notify(a, "campaign_result", "U1 C1", NULL), ESIM_OK);
    assert_true(heard(l, got, "campaign_result=U1 C1;"));
    assert_int_equal(esim_store_unit_begin(a, NULL), ESIM_OK);
    assert_int_equal(esim_store_notify(a, "undone", NULL, NULL), ESIM_OK);
    assert_int_equal(esim_store_unit_end(a, false, NULL), ESIM_OK);
    assert_int_equal(esim_store_unit_begin(a, NULL), ESIM_OK);
    assert_int_equal(esim_store_notify(a, "kept", NULL, NULL), ESIM_OK);
    assert_int_equal(esim_store_unit_end(a, true, NULL), ESIM_OK);
    assert_true(heard(l, got, "kept=;"));
    assert_null(strstr(got, "undone"));
    esim_store_listener_free(l);

    /* The shared outbox: a claimed row is its claimer's; a free or lapsed
     * one goes to the first to claim it, once. */
    int64_t r1 = 0, r2 = 0, r3 = 0;
    assert_int_equal(esim_store_outbox_add_claimed(a, 7, "{\"a\":1}", 7, "A", 60000, 1, &r1, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_outbox_add(a, 7, "{\"b\":2}", 7, 2, &r2, NULL), ESIM_OK);
    assert_int_equal(esim_store_outbox_add_claimed(a, 7, "{\"c\":3}", 7, "A", 1, 3, &r3, NULL),
                     ESIM_OK);
    usleep(20 * 1000); /* r3's claim lapses */
    store_outbox_row *rows = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_outbox_claim(b, "B", 60000, 10, &rows, &n, NULL), ESIM_OK);
    assert_int_equal(n, 2);
    assert_true(rows[0].id == r2 && rows[1].id == r3);
    assert_memory_equal(rows[1].body.data, "{\"c\":3}", 7);
    esim_store_outbox_free(rows, n);
    assert_int_equal(esim_store_outbox_renew(b, "B", 60000, NULL), ESIM_OK);
    assert_int_equal(esim_store_outbox_claim(a, "A", 60000, 10, &rows, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0);
    esim_store_outbox_free(rows, n);
    esim_store_close(b);
    esim_store_close(a);
}

static void test_features(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    assert_non_null(esim_store_backend(st));
    unsigned f = esim_store_features(st);
    assert_int_equal(f & ~(unsigned)(ESIM_STORE_FEATURE_BATCH | ESIM_STORE_FEATURE_DEFERRED_SYNC |
                                     ESIM_STORE_FEATURE_SHARED),
                     0);
    /* Without batching, the batch calls are harmless and every operation
     * commits on its own. */
    assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
    enroll(st, "U1", NULL);
    assert_int_equal(esim_store_batch_commit(st, NULL), ESIM_OK);
    assert_int_equal(esim_store_batch_commit(st, NULL), ESIM_OK); /* none open: nothing */
    esim_store_batch_rollback(st);                                /* none open: nothing */
    store_device d;
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    esim_store_close(st);
}

/* Units: several operations as one, nested, inside or outside a batch. */
static void test_units(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    enroll(st, "U1", NULL);
    /* Undone as a whole, though each operation in it succeeded. */
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    enqueue(st, "undone", "U1", 0, 0);
    store_campaign c = {.id = "camp-1", .name = "n", .definition = "{}", .state = 1};
    assert_int_equal(esim_store_campaign_save(st, "camp-1", &c, NULL, 0, NULL, 0, 5, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_unit_end(st, false, NULL), ESIM_OK);
    store_command_info info;
    store_queue_entry *e = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_command_get(st, "undone", NULL, 10, &info, &e, &n, NULL),
                     ESIM_ENOTFOUND);
    store_campaign *list = NULL;
    assert_int_equal(esim_store_campaigns(st, &list, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0);
    /* Committed as a whole; a refused operation inside leaves the rest, and
     * an inner unit is a part of the outer one. */
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    enqueue(st, "kept", "U1", 0, 0);
    const char *unknown[] = {"U9"};
    store_command_in bad = {
        .uuid = "refused", .request_type = "ProfileList", .body = "<plist/>", .body_len = 8};
    assert_int_equal(esim_store_command_enqueue(st, &bad, unknown, 1, 1, NULL), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    assert_int_equal(esim_store_campaign_save(st, "camp-1", &c, NULL, 0, NULL, 0, 5, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_unit_end(st, true, NULL), ESIM_OK);
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    enqueue(st, "inner-undone", "U1", 0, 0);
    assert_int_equal(esim_store_unit_end(st, false, NULL), ESIM_OK);
    assert_int_equal(esim_store_unit_end(st, true, NULL), ESIM_OK);
    assert_int_equal(state_of(st, "kept", "U1"), STORE_Q_QUEUED);
    assert_int_equal(esim_store_command_get(st, "inner-undone", NULL, 10, &info, &e, &n, NULL),
                     ESIM_ENOTFOUND);
    assert_int_equal(esim_store_campaigns(st, &list, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    esim_store_campaigns_free(list, n);
    /* Inside a batch, a unit is a part of it. */
    if (esim_store_features(st) & ESIM_STORE_FEATURE_BATCH) {
        assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
        assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
        enqueue(st, "in-batch", "U1", 0, 0);
        assert_int_equal(esim_store_unit_end(st, true, NULL), ESIM_OK);
        esim_store_batch_rollback(st);
        assert_int_equal(esim_store_command_get(st, "in-batch", NULL, 10, &info, &e, &n, NULL),
                         ESIM_ENOTFOUND);
    }
    esim_store_close(st);
    /* What a unit committed survives a reopen. */
    st = NULL;
    assert_int_equal(esim_store_open(spec, NULL, NULL, &st, NULL), ESIM_OK);
    assert_int_equal(state_of(st, "kept", "U1"), STORE_Q_QUEUED);
    esim_store_close(st);
}

static void test_campaign_records(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    esim_error e;
    store_campaign c = {
        .id = "camp-1", .name = "first", .definition = "{\"a\":1}", .state = 1, .created_ms = 100};
    store_campaign_command cmds[2] = {{"cmd-b", 1}, {"cmd-a", 2}};
    store_campaign_device devs[2] = {
        {.index = 0,
         .udid = "U1",
         .eid = "89049032000000000000000000000001",
         .state = 2,
         .step = 1,
         .flags = 5,
         .pushes = 3,
         .not_now = 7,
         .deadline_ms = 9000,
         .command_uuid = "cmd-b",
         .reason = NULL},
        {.index = 1, .udid = "U2", .state = 4, .reason = "it failed", .platform = 1},
    };
    assert_int_equal(esim_store_campaign_save(st, "camp-1", &c, cmds, 2, devs, 2, 200, NULL),
                     ESIM_OK);
    /* A missing definition or command uuid is refused and changes nothing. */
    store_campaign bad = {.id = "camp-2", .definition = NULL};
    assert_int_equal(esim_store_campaign_save(st, "camp-2", &bad, NULL, 0, NULL, 0, 1, &e),
                     ESIM_EINVAL);
    store_campaign_command nouuid = {"", 1};
    assert_int_equal(esim_store_campaign_save(st, "camp-1", NULL, &nouuid, 1, NULL, 0, 1, &e),
                     ESIM_EINVAL);
    /* Later saves replace the row's state and a device's record; a command
     * recorded again keeps its place. */
    c.state = 3;
    devs[1].state = 5;
    devs[1].reason = NULL;
    store_campaign_command more[2] = {{"cmd-b", 1}, {"cmd-c", 1}};
    assert_int_equal(esim_store_campaign_save(st, "camp-1", &c, more, 2, &devs[1], 1, 300, NULL),
                     ESIM_OK);
    store_campaign c2 = {.id = "camp-0", .definition = "{}", .state = 0, .created_ms = 150};
    assert_int_equal(esim_store_campaign_save(st, "camp-0", &c2, NULL, 0, NULL, 0, 300, NULL),
                     ESIM_OK);
    store_campaign *list = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_campaigns(st, &list, &n, NULL), ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].id, "camp-1"); /* oldest first */
    assert_string_equal(list[0].name, "first");
    assert_string_equal(list[0].definition, "{\"a\":1}");
    assert_int_equal(list[0].state, 3);
    assert_int_equal(list[0].created_ms, 100);
    assert_int_equal(list[0].updated_ms, 300);
    assert_string_equal(list[1].id, "camp-0");
    esim_store_campaigns_free(list, n);
    store_campaign_device *d = NULL;
    assert_int_equal(esim_store_campaign_devices(st, "camp-1", &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 2);
    assert_int_equal(d[0].index, 0);
    assert_string_equal(d[0].udid, "U1");
    assert_string_equal(d[0].eid, "89049032000000000000000000000001");
    assert_int_equal(d[0].flags, 5);
    assert_int_equal(d[0].pushes, 3);
    assert_int_equal(d[0].not_now, 7);
    assert_int_equal(d[0].deadline_ms, 9000);
    assert_string_equal(d[0].command_uuid, "cmd-b");
    assert_null(d[0].reason);
    assert_int_equal(d[1].state, 5);
    assert_null(d[1].reason);
    assert_int_equal(d[0].platform, 0);
    assert_int_equal(d[1].platform, 1); /* the platform byte is kept */
    esim_store_campaign_devices_free(d, n);
    store_campaign_command *cl = NULL;
    assert_int_equal(esim_store_campaign_commands(st, "camp-1", &cl, &n, NULL), ESIM_OK);
    assert_int_equal(n, 3);
    assert_string_equal(cl[0].uuid, "cmd-b");
    assert_string_equal(cl[1].uuid, "cmd-a");
    assert_int_equal(cl[1].step, 2);
    assert_string_equal(cl[2].uuid, "cmd-c");
    free(cl);
    assert_int_equal(esim_store_campaign_devices(st, "camp-0", &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0);
    /* A record saved again takes every field of the new one; one saved
     * under another UDID at the same index is that UDID's from then on. */
    store_campaign_device again = {.index = 0,
                                   .udid = "U1",
                                   .eid = "89049032000000000000000000000009",
                                   .iccid = "8901000000000000009",
                                   .state = 3,
                                   .step = 2,
                                   .retries = 4,
                                   .verify_tries = 5,
                                   .flags = 6,
                                   .pushes = 7,
                                   .not_now = 8,
                                   .changed_ms = 9,
                                   .next_ms = 10,
                                   .deadline_ms = 11,
                                   .last_push_ms = 12,
                                   .push_state = 2,
                                   .command_uuid = "cmd-c",
                                   .reason = "again",
                                   .platform = 2};
    store_campaign_device moved = {.index = 1, .udid = "U3", .state = 6};
    assert_int_equal(esim_store_campaign_save(st, "camp-1", NULL, NULL, 0, &again, 1, 400, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_campaign_save(st, "camp-1", NULL, NULL, 0, &moved, 1, 400, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_campaign_devices(st, "camp-1", &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(d[0].udid, "U1");
    assert_string_equal(d[0].eid, again.eid);
    assert_string_equal(d[0].iccid, again.iccid);
    assert_int_equal(d[0].state, 3);
    assert_int_equal(d[0].step, 2);
    assert_int_equal(d[0].retries, 4);
    assert_int_equal(d[0].verify_tries, 5);
    assert_int_equal(d[0].flags, 6);
    assert_int_equal(d[0].pushes, 7);
    assert_int_equal(d[0].not_now, 8);
    assert_int_equal(d[0].changed_ms, 9);
    assert_int_equal(d[0].next_ms, 10);
    assert_int_equal(d[0].deadline_ms, 11);
    assert_int_equal(d[0].last_push_ms, 12);
    assert_int_equal(d[0].push_state, 2);
    assert_string_equal(d[0].command_uuid, "cmd-c");
    assert_string_equal(d[0].reason, "again");
    assert_int_equal(d[0].platform, 2);
    assert_string_equal(d[1].udid, "U3");
    assert_int_equal(d[1].state, 6);
    assert_int_equal(d[1].platform, 0);
    esim_store_campaign_devices_free(d, n);
    esim_store_close(st);
}

/* A campaign's state as a compare-and-set on its row's version, from two
 * handles on one store (two instances): the second writer over a version
 * it did not see is refused, changes nothing and learns what the row says
 * now; a write of the whole row counts as a change too. */
static void test_campaign_state_compare_and_set(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    store *other = NULL;
    assert_int_equal(esim_store_open(spec, NULL, NULL, &other, NULL), ESIM_OK);
    store_campaign c = {.id = "camp-1", .definition = "{}", .state = 0, .created_ms = 100};
    assert_int_equal(esim_store_campaign_save(st, "camp-1", &c, NULL, 0, NULL, 0, 200, NULL),
                     ESIM_OK);
    store_campaign *list = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_campaigns(other, &list, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].version, 1);
    esim_store_campaigns_free(list, n);
    int cur = -1;
    int64_t ver = 0;
    /* Both saw version 1; the first to write wins. */
    assert_int_equal(esim_store_campaign_set_state(other, "camp-1", 2, 1, 300, &cur, &ver, NULL),
                     ESIM_OK);
    assert_int_equal(cur, 2);
    assert_int_equal(ver, 2);
    esim_error e = {{0}};
    assert_int_equal(esim_store_campaign_set_state(st, "camp-1", 3, 1, 301, &cur, &ver, &e),
                     ESIM_ESTATE);
    assert_non_null(strstr(e.msg, "changed meanwhile"));
    assert_int_equal(cur, 2); /* what the other wrote */
    assert_int_equal(ver, 2);
    /* Decided again on version 2. */
    assert_int_equal(esim_store_campaign_set_state(st, "camp-1", 3, 2, 302, &cur, &ver, NULL),
                     ESIM_OK);
    assert_int_equal(ver, 3);
    /* A save of the row moves the version on too. */
    c.state = 4;
    assert_int_equal(esim_store_campaign_save(other, "camp-1", &c, NULL, 0, NULL, 0, 400, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_campaign_set_state(st, "camp-1", 2, 3, 401, &cur, &ver, NULL),
                     ESIM_ESTATE);
    assert_int_equal(cur, 4);
    assert_int_equal(ver, 4);
    assert_int_equal(esim_store_campaigns(st, &list, &n, NULL), ESIM_OK);
    assert_int_equal(list[0].state, 4);
    assert_int_equal(list[0].updated_ms, 400);
    assert_int_equal(list[0].version, 4);
    esim_store_campaigns_free(list, n);
    assert_int_equal(esim_store_campaign_set_state(st, "nope", 2, 1, 500, NULL, NULL, NULL),
                     ESIM_ENOTFOUND);
    assert_int_equal(esim_store_campaign_set_state(st, "", 2, 1, 500, NULL, NULL, NULL),
                     ESIM_EINVAL);
    /* Inside a unit, refused, the unit goes on. */
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    assert_int_equal(esim_store_campaign_set_state(st, "camp-1", 2, 1, 600, &cur, &ver, NULL),
                     ESIM_ESTATE);
    assert_int_equal(esim_store_campaign_set_state(st, "camp-1", 0, 4, 600, &cur, &ver, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_unit_end(st, true, NULL), ESIM_OK);
    assert_int_equal(esim_store_campaigns(other, &list, &n, NULL), ESIM_OK);
    assert_int_equal(list[0].state, 0);
    assert_int_equal(list[0].version, 5);
    esim_store_campaigns_free(list, n);
    esim_store_close(other);
    esim_store_close(st);
}

/* A campaign's totals: written by the instance driving it, read back by
 * the next (esim_store_campaigns); the row's version stays. */
static void test_campaign_totals(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    store *other = NULL;
    assert_int_equal(esim_store_open(spec, NULL, NULL, &other, NULL), ESIM_OK);
    store_campaign c = {.id = "camp-t", .definition = "{}", .state = 1, .created_ms = 100};
    assert_int_equal(esim_store_campaign_save(st, "camp-t", &c, NULL, 0, NULL, 0, 200, NULL),
                     ESIM_OK);
    store_campaign *list = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_campaigns(other, &list, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].pushes, 0);
    assert_int_equal(list[0].commands, 0);
    esim_store_campaigns_free(list, n);
    /* In a unit, as the campaign layer writes them with its records. */
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    assert_int_equal(esim_store_campaign_totals(st, "camp-t", 2048, 6001, NULL), ESIM_OK);
    assert_int_equal(esim_store_unit_end(st, true, NULL), ESIM_OK);
    assert_int_equal(esim_store_campaign_totals(other, "camp-t", 2049, 6002, NULL), ESIM_OK);
    assert_int_equal(esim_store_campaigns(st, &list, &n, NULL), ESIM_OK);
    assert_int_equal(list[0].pushes, 2049);
    assert_int_equal(list[0].commands, 6002);
    assert_int_equal(list[0].version, 1);
    assert_int_equal(list[0].state, 1);
    esim_store_campaigns_free(list, n);
    /* Undone with its unit. */
    assert_int_equal(esim_store_unit_begin(st, NULL), ESIM_OK);
    assert_int_equal(esim_store_campaign_totals(st, "camp-t", 1, 1, NULL), ESIM_OK);
    assert_int_equal(esim_store_unit_end(st, false, NULL), ESIM_OK);
    assert_int_equal(esim_store_campaigns(other, &list, &n, NULL), ESIM_OK);
    assert_int_equal(list[0].pushes, 2049);
    esim_store_campaigns_free(list, n);
    esim_error e = {{0}};
    assert_int_equal(esim_store_campaign_totals(st, "nope", 1, 1, &e), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_campaign_totals(st, "camp-t", -1, 1, NULL), ESIM_EINVAL);
    assert_int_equal(esim_store_campaign_totals(st, "", 1, 1, NULL), ESIM_EINVAL);
    esim_store_close(other);
    esim_store_close(st);
}

static void test_imports_groups_tags_facts(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    esim_error e;
    store_manifest_row m[] = {{"SER1", "89049032000000000000000000000001"},
                              {"SER2", "89049032000000000000000000000002"}};
    assert_int_equal(esim_store_manifest_import(st, m, 2, 10, NULL), ESIM_OK);
    m[0].eid = "89049032000000000000000000000003"; /* replaces SER1's */
    assert_int_equal(esim_store_manifest_import(st, m, 1, 11, NULL), ESIM_OK);
    store_manifest_row badm[] = {{"SER9", "89049032000000000000000000000009"}, {"", "x"}};
    assert_int_equal(esim_store_manifest_import(st, badm, 2, 12, &e), ESIM_EINVAL);
    char eid[ESIM_EID_LEN + 1];
    assert_int_equal(esim_store_manifest_eid(st, "SER1", eid, NULL), ESIM_OK);
    assert_string_equal(eid, "89049032000000000000000000000003");
    assert_int_equal(esim_store_manifest_eid(st, "SER9", eid, &e), ESIM_ENOTFOUND);
    store_code_row codes[] = {
        {"89049032000000000000000000000001", "LPA:1$smdp.example$MID-1", "smdp.example", "MID-1",
         "8944000000000000001"},
        {"89049032000000000000000000000002", "LPA:1$smdp.example$", "smdp.example", "", ""}};
    assert_int_equal(esim_store_codes_import(st, codes, 2, 10, NULL), ESIM_OK);
    char iccid[21], mid[256];
    assert_int_equal(esim_store_code_for_eid(st, codes[0].eid, iccid, mid, NULL), ESIM_OK);
    assert_string_equal(iccid, "8944000000000000001");
    assert_string_equal(mid, "MID-1");
    assert_int_equal(esim_store_code_for_eid(st, codes[1].eid, iccid, mid, NULL), ESIM_OK);
    assert_string_equal(iccid, "");
    assert_int_equal(
        esim_store_code_for_eid(st, "89049032000000000000000000000009", iccid, mid, &e),
        ESIM_ENOTFOUND);

    const char *members[] = {"00008030-000000000000000B", "00008030-000000000000000A"};
    assert_int_equal(esim_store_group_put(st, "pilot", members, 2, NULL, 0, true, 1, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_group_put(st, "pilot", NULL, 0, NULL, 0, true, 1, &e), ESIM_EEXIST);
    assert_int_equal(esim_store_group_put(st, "nope", members, 1, NULL, 0, false, 1, &e),
                     ESIM_ENOTFOUND);
    assert_int_equal(esim_store_group_put(st, "bad name", NULL, 0, NULL, 0, true, 1, &e),
                     ESIM_EINVAL);
    const char *badudid[] = {"not a udid!"};
    assert_int_equal(esim_store_group_put(st, "pilot", badudid, 1, NULL, 0, false, 1, &e),
                     ESIM_EINVAL);
    assert_int_equal(esim_store_group_put(st, "pilot", NULL, 0, members, 1, false, 1, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_group_put(st, "empty", NULL, 0, NULL, 0, true, 1, NULL), ESIM_OK);
    store_group *groups = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_groups(st, &groups, &n, NULL), ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(groups[0].name, "empty");
    assert_int_equal(groups[0].members, 0);
    assert_string_equal(groups[1].name, "pilot");
    assert_int_equal(groups[1].members, 1);
    free(groups);
    char(*names)[65] = NULL;
    assert_int_equal(esim_store_group_members(st, "pilot", &names, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "00008030-000000000000000A");
    free(names);
    assert_int_equal(esim_store_group_delete(st, "pilot", NULL), ESIM_OK);
    assert_int_equal(esim_store_group_delete(st, "pilot", &e), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_group_members(st, "pilot", &names, &n, &e), ESIM_ENOTFOUND);

    const char *tags[] = {"red", "blue"};
    assert_int_equal(esim_store_tags_set(st, members[0], tags, 2, NULL, 0, NULL), ESIM_OK);
    assert_int_equal(esim_store_tags_set(st, members[1], tags, 1, NULL, 0, NULL), ESIM_OK);
    const char *badtag[] = {"no/slash"};
    assert_int_equal(esim_store_tags_set(st, members[0], badtag, 1, NULL, 0, &e), ESIM_EINVAL);
    assert_int_equal(esim_store_tags_set(st, members[0], NULL, 0, tags, 1, NULL), ESIM_OK);
    assert_int_equal(esim_store_device_tags(st, members[0], &names, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], "blue");
    free(names);
    assert_int_equal(esim_store_tag_devices(st, "red", &names, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(names[0], members[1]);
    free(names);

    store_device_facts f = {.udid = "U1", .supervised = 1, .os_version = "18.1", .updated_ms = 5};
    assert_int_equal(esim_store_facts_put(st, &f, 1, NULL), ESIM_OK);
    /* Unknown fields keep the old values; the ICCID goes with the EID. */
    store_device_facts g = {.udid = "U1",
                            .supervised = -1,
                            .eid = "89049032000000000000000000000001",
                            .iccid = "8944000000000000001",
                            .verified_ms = 40,
                            .updated_ms = 6};
    assert_int_equal(esim_store_facts_put(st, &g, 1, NULL), ESIM_OK);
    store_device_facts got;
    assert_int_equal(esim_store_facts_get(st, "U1", &got, NULL), ESIM_OK);
    assert_int_equal(got.supervised, 1);
    assert_string_equal(got.os_version, "18.1");
    assert_string_equal(got.eid, "89049032000000000000000000000001");
    assert_string_equal(got.iccid, "8944000000000000001");
    assert_int_equal(got.verified_ms, 40);
    assert_int_equal(got.updated_ms, 6);
    assert_int_equal(esim_store_facts_get(st, "U2", &got, &e), ESIM_ENOTFOUND);
    assert_int_equal(got.supervised, -1);
    esim_store_close(st);
}

/* NanoMDM compatibility: token_update_tally counts the TokenUpdates of the
 * current enrolment; a device enrolled without an identity (migrated) is
 * bound to the first one it presents; bootstrap tokens are kept and given
 * back. */
static void test_tally_retro_bind_bootstrap(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    esim_error e;
    store_device d;
    enroll(st, "U1", "c1");
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_int_equal(d.token_update_tally, 1);
    assert_int_equal(esim_store_device_token_update(st, "U1", "c1", "t", "aa", "m", 1002, NULL),
                     ESIM_OK);
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_int_equal(d.token_update_tally, 2);
    assert_string_equal(d.push_token, "aa"); /* any non-empty token: APNs judges it */
    /* The tally the update returns is the row's. */
    int64_t tally = -1;
    assert_int_equal(
        esim_store_device_token_update_tally(st, "U1", "c1", "t", "ab", "m", 1002, &tally, NULL),
        ESIM_OK);
    assert_int_equal(tally, 3);
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_int_equal(d.token_update_tally, 3);
    /* Refused: nothing written, the tally left as it was. */
    assert_int_equal(
        esim_store_device_token_update_tally(st, "U1", "c2", "t", "ac", "m", 1002, &tally, NULL),
        ESIM_EAUTH);
    assert_int_equal(tally, 3);
    assert_int_equal(
        esim_store_device_token_update_tally(st, "U9", "c9", "t", "ac", "m", 1002, &tally, NULL),
        ESIM_ENOTFOUND);
    assert_int_equal(tally, 3);
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_int_equal(d.token_update_tally, 3);
    assert_string_equal(d.push_token, "ab");
    store_authenticate_in again = {.udid = "U1", .topic = "t", .cert_sha256 = "c1"};
    assert_int_equal(esim_store_device_authenticate(st, &again, 1003, NULL), ESIM_OK);
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_int_equal(d.token_update_tally, 0);
    assert_int_equal(
        esim_store_device_token_update_tally(st, "U1", "c1", "t", "ad", "m", 1004, &tally, NULL),
        ESIM_OK);
    assert_int_equal(tally, 1);
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_int_equal(d.token_update_tally, 1);

    /* Migrated: no identity bound; the first one presented is bound. */
    enroll(st, "M1", "");
    enroll(st, "M2", "");
    char next[128];
    store_exchange_in in = {.udid = "M1", .cert_sha256 = "c1", .status = "Idle"};
    store_exchange_out out = {0};
    assert_int_equal(esim_store_device_exchange(st, &in, 1010, &out, &e), ESIM_EAUTH);
    assert_non_null(strstr(e.msg, "one identity"));
    in.cert_sha256 = "m1";
    assert_int_equal(esim_store_device_exchange(st, &in, 1011, &out, &e), ESIM_OK);
    esim_buf_free(&out.next.body);
    assert_int_equal(esim_store_device_get(st, "M1", &d, NULL), ESIM_OK);
    assert_string_equal(d.cert_sha256, "m1");
    in.cert_sha256 = "m9";
    assert_int_equal(esim_store_device_exchange(st, &in, 1012, &out, &e), ESIM_EAUTH);
    assert_int_equal(esim_store_device_checkout(st, "M2", "m1", 1013, &e), ESIM_EAUTH);
    assert_int_equal(exchange(st, "M2", "Idle", NULL, NULL, 0, 1014, next, NULL), ESIM_OK);

    /* Bootstrap token. */
    esim_buf tok = {0};
    assert_int_equal(esim_store_device_bootstrap_get(st, "U1", "c1", &tok, 1020, &e), ESIM_OK);
    assert_int_equal(tok.len, 0);
    assert_int_equal(esim_store_device_bootstrap_set(st, "U1", "c1", "\x01\x02\x03", 3, 1021, &e),
                     ESIM_OK);
    assert_int_equal(esim_store_device_bootstrap_set(st, "U1", "c2", "x", 1, 1022, &e), ESIM_EAUTH);
    assert_int_equal(esim_store_device_bootstrap_set(st, "U9", "c9", "x", 1, 1022, &e),
                     ESIM_ENOTFOUND);
    assert_int_equal(esim_store_device_checkin(st, "U1", "c1", "get_token", "t", 1022, &e),
                     ESIM_OK);
    assert_int_equal(esim_store_device_checkin(st, "U1", "c2", "get_token", "t", 1022, &e),
                     ESIM_EAUTH);
    assert_int_equal(esim_store_device_checkin(st, "U7", "c7", "get_token", "t", 1022, &e),
                     ESIM_ENOTFOUND);
    assert_int_equal(esim_store_device_bootstrap_get(st, "U1", "c1", &tok, 1023, &e), ESIM_OK);
    assert_int_equal(tok.len, 3);
    assert_memory_equal(tok.data, "\x01\x02\x03", 3);
    esim_buf_free(&tok);
    assert_int_equal(esim_store_device_bootstrap_get(st, "U1", "c2", &tok, 1024, &e), ESIM_EAUTH);
    assert_null(tok.data);
    assert_int_equal(esim_store_device_bootstrap_set(st, "U1", "c1", NULL, 0, 1024, &e), ESIM_OK);
    assert_int_equal(esim_store_device_bootstrap_get(st, "U1", "c1", &tok, 1024, &e), ESIM_OK);
    assert_int_equal(tok.len, 0);
    assert_int_equal(esim_store_device_checkout(st, "U1", "c1", 1025, NULL), ESIM_OK);
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_int_equal(d.token_update_tally, 0);
    assert_int_equal(esim_store_device_bootstrap_get(st, "U1", "c1", &tok, 1026, &e), ESIM_ESTATE);
    esim_store_close(st);
}

/* An operator retires a device: its queue closes, it is no longer
 * enrolled, its identity is released, and the ledger says so. */
static void test_retire(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    esim_error e;
    assert_int_equal(esim_store_device_retire(st, "nobody", NULL, 5, &e), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_device_retire(st, "", NULL, 5, &e), ESIM_EINVAL);
    enroll(st, "U1", "c1");
    enqueue(st, "cmd-r", "U1", 0, 0);
    assert_int_equal(esim_store_device_retire(st, "U1", "by key 'ops'", 3000, &e), ESIM_OK);
    assert_int_equal(state_of(st, "cmd-r", "U1"), STORE_Q_CANCELED);
    store_device d;
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_false(d.enrolled);
    assert_int_equal(d.push_state, STORE_PUSH_NONE);
    assert_string_equal(d.push_token, "");
    char next[128];
    assert_int_equal(exchange(st, "U1", "Idle", NULL, NULL, 0, 3001, next, NULL), ESIM_ESTATE);
    const char *kinds[] = {"retired"};
    store_event ev;
    assert_int_equal(esim_store_event_latest(st, "U1", kinds, 1, &ev, NULL), ESIM_OK);
    assert_string_equal(ev.detail, "by key 'ops'");
    /* Retiring again is harmless; a new identity may enrol it again. */
    assert_int_equal(esim_store_device_retire(st, "U1", NULL, 3002, &e), ESIM_OK);
    enroll(st, "U1", "c9");
    assert_int_equal(esim_store_device_get(st, "U1", &d, NULL), ESIM_OK);
    assert_true(d.enrolled);
    esim_store_close(st);
}

static void test_audit_log(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    esim_error e;
    store_audit a = {.at = 100, .status = 200};
    assert_int_equal(esim_store_audit_add(st, &a, &e), ESIM_EINVAL);
    for (int i = 0; i < 5; i++) {
        snprintf(a.who, sizeof a.who, "key-%d", i);
        snprintf(a.role, sizeof a.role, "operator");
        snprintf(a.method, sizeof a.method, "POST");
        snprintf(a.target, sizeof a.target, "/v1/commands");
        snprintf(a.detail, sizeof a.detail, i == 3 ? "udids: must be a non-empty array" : "");
        a.status = i == 3 ? 400 : 200;
        a.at = 100 + i;
        assert_int_equal(esim_store_audit_add(st, &a, &e), ESIM_OK);
    }
    store_audit *list = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_audit_list(st, 0, 3, &list, &n, &e), ESIM_OK);
    assert_int_equal(n, 3);
    assert_string_equal(list[0].who, "key-0");
    assert_int_equal(list[0].at, 100);
    assert_true(list[1].id > list[0].id);
    int64_t after = list[2].id;
    free(list);
    assert_int_equal(esim_store_audit_list(st, after, 100, &list, &n, &e), ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(list[0].who, "key-3");
    assert_int_equal(list[0].status, 400);
    assert_string_equal(list[0].detail, "udids: must be a non-empty array");
    assert_string_equal(list[0].method, "POST");
    assert_string_equal(list[0].target, "/v1/commands");
    assert_string_equal(list[0].role, "operator");
    free(list);
    assert_int_equal(esim_store_audit_list(st, 0, 0, &list, &n, &e), ESIM_OK);
    assert_int_equal(n, 0);
    assert_null(list);
    esim_store_close(st);
}

/* The dashboard's reads: search by any of the identifying fields in any
 * case, paged; the fleet counted by model, enrolment, push state and
 * verified eSIM. */
static void test_search_and_fleet_counts(void **state)
{
    (void)state;
    char spec[600];
    store *st = open_fresh(spec);
    static const char *const udids[] = {"A-0001", "A-0002", "B-0003", "B-0004"};
    static const char *const serials[] = {"SERIALX1", "SERIALX2", "OTHER3", "OTHER4"};
    static const char *const products[] = {"iPhone15,2", "iPhone15,2", "iPad13,1", "iPhone15,2"};
    for (size_t i = 0; i < 4; i++) {
        store_authenticate_in in = {.udid = udids[i],
                                    .topic = "t",
                                    .serial_number = serials[i],
                                    .product_name = products[i],
                                    .device_name = i == 3 ? "Front Desk" : "Phone"};
        assert_int_equal(esim_store_device_authenticate(st, &in, 1000, NULL), ESIM_OK);
    }
    assert_int_equal(
        esim_store_device_token_update(st, "A-0001", NULL, "t", "00ff", "m", 1001, NULL), ESIM_OK);
    store_device_facts f = {.udid = "B-0004", .supervised = -1, .verified_ms = 5};
    assert_int_equal(esim_store_facts_put(st, &f, 1, NULL), ESIM_OK);

    store_device *d = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_device_search(st, "serialx", NULL, 10, &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 2);
    assert_string_equal(d[0].udid, "A-0001");
    assert_string_equal(d[1].udid, "A-0002");
    free(d);
    assert_int_equal(esim_store_device_search(st, "serialx", "A-0001", 10, &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(d[0].udid, "A-0002");
    free(d);
    assert_int_equal(esim_store_device_search(st, "FRONT desk", NULL, 10, &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    assert_string_equal(d[0].udid, "B-0004");
    free(d);
    assert_int_equal(esim_store_device_search(st, "ipad", NULL, 10, &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 1);
    free(d);
    assert_int_equal(esim_store_device_search(st, "%", NULL, 10, &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 0); /* no wildcards */
    free(d);
    assert_int_equal(esim_store_device_search(st, "", NULL, 3, &d, &n, NULL), ESIM_OK);
    assert_int_equal(n, 3); /* empty: every device, paged */
    free(d);

    store_fleet_row *rows = NULL;
    assert_int_equal(esim_store_fleet_counts(st, &rows, &n, NULL), ESIM_OK);
    uint64_t total = 0, iphones = 0, valid = 0, verified = 0;
    for (size_t i = 0; i < n; i++) {
        total += rows[i].count;
        assert_true(rows[i].enrolled);
        if (strcmp(rows[i].product_name, "iPhone15,2") == 0)
            iphones += rows[i].count;
        assert_string_equal(rows[i].platform, "apple");
        if (rows[i].push_state == STORE_PUSH_VALID)
            valid += rows[i].count;
        if (rows[i].verified)
            verified += rows[i].count;
    }
    free(rows);
    assert_int_equal(total, 4);
    assert_int_equal(iphones, 3);
    assert_int_equal(valid, 1);
    assert_int_equal(verified, 1);
    esim_store_close(st);
}

/* Enrolment stays O(1) in the fleet's size: with many devices enrolled, no
 * statement of Authenticate, TokenUpdate or a check-in walks the whole
 * devices table (the lookup of an identity's device must use its index). */
static void test_enrolment_uses_indexes(void **state)
{
    (void)state;
    char path[600];
    store *st = open_fresh_sqlite(path);
    if (!st)
        skip();
    char udid[64], cert[65];
    for (int i = 0; i < 200; i++) {
        snprintf(udid, sizeof udid, "00008110-%016d", i);
        snprintf(cert, sizeof cert, "%064d", i + 1);
        enroll(st, udid, cert);
        assert_int_equal(esim_store_device_checkin(st, udid, cert, "idle", NULL, 1002, NULL),
                         ESIM_OK);
    }
    assert_int_equal(store_sqlite_fullscan_steps(st), 0);
    /* The round trip too: the command found, answered, the next one looked
     * for, all by index. */
    char uuid[64], next[128];
    for (int i = 0; i < 200; i++) {
        snprintf(udid, sizeof udid, "00008110-%016d", i);
        snprintf(cert, sizeof cert, "%064d", i + 1);
        snprintf(uuid, sizeof uuid, "cmd-%d", i);
        enqueue(st, uuid, udid, 0, 0);
        assert_int_equal(exchange(st, udid, "Idle", NULL, NULL, 0, 3000, next, NULL), ESIM_OK);
        assert_string_equal(next, uuid);
        assert_int_equal(exchange(st, udid, "Acknowledged", uuid, NULL, 0, 3001, next, NULL),
                         ESIM_OK);
        assert_string_equal(next, "");
    }
    assert_int_equal(store_sqlite_fullscan_steps(st), 0);
    esim_store_close(st);
}

/* A known device's check-in and round trip: the identity check and
 * last_seen_at are one statement (device_seen_verified), and what does
 * not pass as it is still gets its refusal (test_identity_binding_and_checkout
 * has the others). */
static void test_round_trip_statements(void **state)
{
    (void)state;
    char path[600];
    store *st = open_fresh_sqlite(path);
    if (!st)
        skip();
    const char *cert = "0000000000000000000000000000000000000000000000000000000000000001";
    enroll(st, "S1", cert);
    enqueue(st, "c1", "S1", 0, 0);
    char next[128];
    /* BEGIN, the device's row, the next entry, its mark, the ledger, COMMIT */
    uint64_t before = store_sqlite_statements_run(st);
    assert_int_equal(exchange(st, "S1", "Idle", NULL, NULL, 0, 3000, next, NULL), ESIM_OK);
    assert_string_equal(next, "c1");
    assert_int_equal(store_sqlite_statements_run(st) - before, 6);
    /* BEGIN, the row, the entry answered, the ledger, the next, COMMIT */
    before = store_sqlite_statements_run(st);
    store_exchange_in in = {.udid = "S1",
                            .cert_sha256 = cert,
                            .status = "Acknowledged",
                            .command_uuid = "c1",
                            .eid = "89049032000001000000000000000001"};
    store_exchange_out out = {0};
    assert_int_equal(esim_store_device_exchange(st, &in, 3001, &out, NULL), ESIM_OK);
    assert_int_equal(out.outcome, STORE_RESULT_APPLIED);
    assert_false(out.next.present);
    assert_int_equal(store_sqlite_statements_run(st) - before, 6);
    store_device d;
    assert_int_equal(esim_store_device_get(st, "S1", &d, NULL), ESIM_OK);
    assert_int_equal(d.last_seen_at, 3001);
    assert_string_equal(d.eid, "89049032000001000000000000000001");
    /* Another identity, or none bound yet: refused or bound, as before. */
    const char *other = "0000000000000000000000000000000000000000000000000000000000000002";
    assert_int_equal(esim_store_device_checkin(st, "S1", other, "idle", NULL, 3002, NULL),
                     ESIM_EAUTH);
    enroll(st, "S2", NULL);
    assert_int_equal(esim_store_device_checkin(st, "S2", other, "idle", NULL, 3003, NULL), ESIM_OK);
    assert_int_equal(esim_store_device_checkin(st, "S2", cert, "idle", NULL, 3004, NULL),
                     ESIM_EAUTH);
    assert_int_equal(esim_store_device_checkin(st, "S9", NULL, "idle", NULL, 3005, NULL),
                     ESIM_ENOTFOUND);
    assert_int_equal(esim_store_device_get(st, "S2", &d, NULL), ESIM_OK);
    assert_int_equal(d.last_seen_at, 3003);
    esim_store_close(st);
}

/* On a back end where every statement is a round trip (PostgreSQL), an
 * entry marked sent and an answer take their ledger rows in the same
 * statement: an exchange is BEGIN, the device's row, two statements and
 * COMMIT (was six). The ledger says the same as before, and a NotNow still
 * owes its push. */
static void test_round_trip_queries(void **state)
{
    (void)state;
    char path[600];
    store *st = open_fresh(path);
    store_backend_stats b0, b1;
    esim_store_backend_stats(st, &b0);
    bool counted = b0.queries > 0; /* SQLite sends no queries */
    const char *cert = "0000000000000000000000000000000000000000000000000000000000000001";
    enroll(st, "Q1", cert);
    enqueue(st, "q1", "Q1", 0, 0);
    enqueue(st, "q2", "Q1", 0, 0);
    char next[128];
    esim_store_backend_stats(st, &b0);
    assert_int_equal(exchange(st, "Q1", "Idle", NULL, NULL, 0, 3000, next, NULL), ESIM_OK);
    assert_string_equal(next, "q1");
    esim_store_backend_stats(st, &b1);
    if (counted)
        assert_int_equal(b1.queries - b0.queries, 5);
    store_exchange_in in = {
        .udid = "Q1", .cert_sha256 = cert, .status = "Acknowledged", .command_uuid = "q1"};
    store_exchange_out out = {0};
    esim_store_backend_stats(st, &b0);
    assert_int_equal(esim_store_device_exchange(st, &in, 3001, &out, NULL), ESIM_OK);
    assert_int_equal(out.outcome, STORE_RESULT_APPLIED);
    assert_true(out.next.present);
    assert_string_equal(out.next.command_uuid, "q2");
    esim_buf_free(&out.next.body);
    esim_store_backend_stats(st, &b1);
    if (counted) /* BEGIN, row, answer + ledger, next, mark + ledger, COMMIT */
        assert_int_equal(b1.queries - b0.queries, 6);
    /* NotNow: recorded, logged, and the device owes a push. */
    store_exchange_in nn = {.udid = "Q1",
                            .cert_sha256 = cert,
                            .status = "NotNow",
                            .command_uuid = "q2",
                            .skip_uuids = (const char *const[]){"q2"},
                            .n_skip = 1,
                            .not_now_backoff_ms = 500};
    assert_int_equal(esim_store_device_exchange(st, &nn, 3002, &out, NULL), ESIM_OK);
    assert_int_equal(out.outcome, STORE_RESULT_APPLIED);
    assert_false(out.next.present);
    assert_int_equal(state_of(st, "q2", "Q1"), STORE_Q_NOT_NOW);
    char due[4][65];
    size_t n_due = 0;
    assert_int_equal(esim_store_push_due(st, 3502, due, 4, &n_due, NULL), ESIM_OK);
    assert_int_equal(n_due, 1);
    assert_string_equal(due[0], "Q1");
    /* A second answer to q1 is an anomaly, written as before (and q2,
     * NotNow'd on another connection, is handed out again). */
    assert_int_equal(esim_store_device_exchange(st, &in, 3003, &out, NULL), ESIM_OK);
    assert_int_equal(out.outcome, STORE_RESULT_ANOMALY);
    esim_buf_free(&out.next.body);
    store_event *ev = NULL;
    size_t nev = 0;
    assert_int_equal(esim_store_events_list(st, "Q1", 0, 100, &ev, &nev, NULL), ESIM_OK);
    const char *want[][3] = {{"sent", "q1", "ProfileList"},
                             {"result", "q1", "Acknowledged"},
                             {"sent", "q2", "ProfileList"},
                             {"result", "q2", "NotNow"},
                             {"anomaly", "q1", NULL},
                             {"sent", "q2", "ProfileList"}}; /* a NotNow'd entry comes back */
    size_t k = 0;
    for (size_t i = 0; i < nev; i++) {
        if (strcmp(ev[i].kind, "sent") != 0 && strcmp(ev[i].kind, "result") != 0 &&
            strcmp(ev[i].kind, "anomaly") != 0)
            continue;
        assert_true(k < 6);
        assert_string_equal(ev[i].kind, want[k][0]);
        assert_string_equal(ev[i].udid, "Q1");
        assert_string_equal(ev[i].command_uuid, want[k][1]);
        if (want[k][2])
            assert_string_equal(ev[i].detail, want[k][2]);
        k++;
    }
    assert_int_equal(k, 6);
    esim_store_events_free(ev, nev);
    esim_store_close(st);
}

/* On PostgreSQL an enrolled device's entry and its "enqueued" row are one
 * statement; every refusal is as before, with nothing queued. */
static void test_enqueue_queries(void **state)
{
    (void)state;
    char path[600];
    store *st = open_fresh(path);
    store_backend_stats b0, b1;
    esim_store_backend_stats(st, &b0);
    bool counted = b0.queries > 0; /* SQLite sends no queries */
    enroll(st, "E1", NULL);
    enroll(st, "E2", NULL);
    enroll(st, "E3", NULL);
    enroll(st, "E4", NULL);
    assert_int_equal(esim_store_device_checkout(st, "E4", NULL, 1500, NULL), ESIM_OK);
    store_command_in c = {
        .uuid = "e1", .request_type = "ProfileList", .body = "<plist/>", .body_len = 8};
    const char *three[] = {"E1", "E2", "E3"};
    esim_store_backend_stats(st, &b0);
    assert_int_equal(esim_store_command_enqueue(st, &c, three, 3, 2000, NULL), ESIM_OK);
    esim_store_backend_stats(st, &b1);
    if (counted) /* BEGIN, the command, one per device, COMMIT (was 3 + 3 per device) */
        assert_int_equal(b1.queries - b0.queries, 6);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(state_of(st, "e1", three[i]), STORE_Q_QUEUED);
        store_event *ev = NULL;
        size_t nev = 0;
        assert_int_equal(esim_store_events_list(st, three[i], 0, 100, &ev, &nev, NULL), ESIM_OK);
        assert_true(nev > 0);
        assert_string_equal(ev[nev - 1].kind, "enqueued");
        assert_string_equal(ev[nev - 1].command_uuid, "e1");
        assert_string_equal(ev[nev - 1].detail, "ProfileList");
        esim_store_events_free(ev, nev);
    }
    /* Refusals, each undoing the whole call. */
    esim_error e;
    const char *unknown[] = {"E1", "E9"};
    c.uuid = "e2";
    assert_int_equal(esim_store_command_enqueue(st, &c, unknown, 2, 2001, &e), ESIM_ENOTFOUND);
    assert_non_null(strstr(e.msg, "no device E9"));
    const char *out[] = {"E2", "E4"};
    assert_int_equal(esim_store_command_enqueue(st, &c, out, 2, 2002, &e), ESIM_ESTATE);
    assert_non_null(strstr(e.msg, "E4 is not enrolled"));
    const char *twice[] = {"E3", "E1", "E3"};
    assert_int_equal(esim_store_command_enqueue(st, &c, twice, 3, 2003, &e), ESIM_EINVAL);
    assert_non_null(strstr(e.msg, "E3 is listed twice"));
    store_command_info info;
    store_queue_entry *entries = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_command_get(st, "e2", NULL, 10, &info, &entries, &n, NULL),
                     ESIM_ENOTFOUND);
    esim_store_close(st);
}

/* Directly in a batch, a device's request takes no savepoint: a refusal
 * (before any write) leaves the batch as it was, and a failure after the
 * request wrote undoes the batch whole (its commit fails), where a
 * savepoint used to undo that request alone. */
static void test_batch_requests_without_savepoints(void **state)
{
    (void)state;
    char path[600];
    store *st = open_fresh_sqlite(path);
    if (!st)
        skip();
    enroll(st, "B1", NULL);
    enroll(st, "B2", NULL);
    enqueue(st, "b1", "B1", 0, 0);
    enqueue(st, "b2", "B2", 0, 0);
    char next[128];
    /* Idle in the batch: the device's row, the next entry, its mark and
     * the ledger; no SAVEPOINT, no RELEASE. */
    assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
    uint64_t before = store_sqlite_statements_run(st);
    assert_int_equal(exchange(st, "B1", "Idle", NULL, NULL, 0, 3000, next, NULL), ESIM_OK);
    assert_string_equal(next, "b1");
    assert_int_equal(store_sqlite_statements_run(st) - before, 4);
    /* Refused before it wrote: the batch goes on and commits. */
    assert_int_equal(exchange(st, "B9", "Idle", NULL, NULL, 0, 3001, next, NULL), ESIM_ENOTFOUND);
    assert_int_equal(esim_store_batch_commit(st, NULL), ESIM_OK);
    assert_int_equal(state_of(st, "b1", "B1"), STORE_Q_SENT);
    /* A failure after the request wrote (its ledger row refused): the
     * batch, the other device's request with it, is undone. */
    const char *file = strchr(path, ':') ? strchr(path, ':') + 1 : path;
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(file, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TRIGGER boom BEFORE INSERT ON events WHEN "
                                  "NEW.udid = 'B2' AND NEW.kind = 'sent' BEGIN "
                                  "SELECT RAISE(ABORT, 'boom'); END",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
    assert_int_equal(exchange(st, "B1", "Acknowledged", "b1", NULL, 0, 3002, next, NULL), ESIM_OK);
    assert_int_equal(exchange(st, "B2", "Idle", NULL, NULL, 0, 3003, next, NULL), ESIM_ESTORE);
    /* Asked for no words, the store still has them. */
    assert_non_null(strstr(esim_store_last_error(st), "boom"));
    esim_error e;
    assert_int_equal(esim_store_batch_commit(st, &e), ESIM_ESTORE);
    assert_int_equal(state_of(st, "b1", "B1"), STORE_Q_SENT);
    assert_int_equal(state_of(st, "b2", "B2"), STORE_Q_QUEUED);
    store_device d;
    assert_int_equal(esim_store_device_get(st, "B2", &d, NULL), ESIM_OK);
    assert_true(d.last_seen_at < 3003);
    /* The next batch starts clean. */
    assert_int_equal(sqlite3_exec(db, "DROP TRIGGER boom", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
    assert_int_equal(exchange(st, "B1", "Acknowledged", "b1", NULL, 0, 3004, next, NULL), ESIM_OK);
    assert_int_equal(esim_store_batch_commit(st, NULL), ESIM_OK);
    assert_int_equal(state_of(st, "b1", "B1"), STORE_Q_ACKNOWLEDGED);
    esim_store_close(st);
}

/* A device's result for |uuid| of |raw_len| bytes (its ledger row). */
static esim_err exchange_raw(store *st, const char *udid, const char *uuid, size_t raw_len,
                             int64_t now)
{
    char *raw = malloc(raw_len);
    assert_non_null(raw);
    memset(raw, 'r', raw_len);
    store_exchange_in in = {.udid = udid,
                            .status = "Acknowledged",
                            .command_uuid = uuid,
                            .raw = raw,
                            .raw_len = raw_len};
    store_exchange_out out = {0};
    esim_err rc = esim_store_device_exchange(st, &in, now, &out, NULL);
    esim_buf_free(&out.next.body);
    free(raw);
    return rc;
}

/* A full disk in the middle of a batch: SQLite rolls the whole transaction
 * back by itself (savepoints and all). The batch is then undone: its later
 * operations are refused (they would have begun transactions of their own
 * and committed outside it), its commit fails, and both report the first
 * failure, not the undo's "no such savepoint" that followed it. */
static void test_batch_undone_by_sqlite(void **state)
{
    (void)state;
    char path[600];
    store *st = open_fresh_sqlite(path);
    if (!st)
        skip();
    enroll(st, "F1", NULL);
    enroll(st, "F2", NULL);
    enqueue(st, "f1", "F1", 0, 0);
    enqueue(st, "f2", "F2", 0, 0);
    char next[128];
    sqlite3 *db = store_sqlite_db(st);
    assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
    assert_int_equal(exchange(st, "F1", "Idle", NULL, NULL, 0, 3000, next, NULL), ESIM_OK);
    assert_string_equal(next, "f1");
    assert_int_equal(exchange(st, "F2", "Idle", NULL, NULL, 0, 3001, next, NULL), ESIM_OK);
    assert_string_equal(next, "f2");
    /* No page more than the file has: the next large row cannot be kept. */
    assert_int_equal(sqlite3_exec(db, "PRAGMA max_page_count = 1", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(exchange_raw(st, "F2", "f2", 256 * 1024, 3002), ESIM_ESTORE);
    assert_true(sqlite3_get_autocommit(db)); /* SQLite undid the batch */
    assert_non_null(strstr(esim_store_last_error(st), "full"));
    /* With what SQLite's log said: which step of the statement failed. */
    assert_non_null(strstr(esim_store_last_error(st), "sqlite: statement aborts at"));
    /* Refused, not committed on its own. */
    assert_int_equal(sqlite3_exec(db, "PRAGMA max_page_count = 1000000", NULL, NULL, NULL),
                     SQLITE_OK);
    esim_error e;
    store_command_in c = {
        .uuid = "f3", .request_type = "ProfileList", .body = "<plist/>", .body_len = 8};
    const char *u[] = {"F2"};
    assert_int_equal(esim_store_command_enqueue(st, &c, u, 1, 3003, &e), ESIM_ESTORE);
    assert_non_null(strstr(e.msg, "full"));
    assert_int_equal(exchange(st, "F2", "Idle", NULL, NULL, 0, 3004, next, NULL), ESIM_ESTORE);
    assert_int_equal(esim_store_batch_commit(st, &e), ESIM_ESTORE);
    assert_non_null(strstr(e.msg, "full"));
    assert_null(strstr(esim_store_last_error(st), "savepoint"));
    /* Nothing of the batch was kept. */
    assert_int_equal(state_of(st, "f1", "F1"), STORE_Q_QUEUED);
    store_command_info info;
    store_queue_entry *entries = NULL;
    size_t n = 0;
    assert_int_equal(esim_store_command_get(st, "f3", NULL, 10, &info, &entries, &n, NULL),
                     ESIM_ENOTFOUND);
    store_device d;
    assert_int_equal(esim_store_device_get(st, "F2", &d, NULL), ESIM_OK);
    assert_true(d.last_seen_at < 3000);
    assert_int_equal(state_of(st, "f2", "F2"), STORE_Q_QUEUED);
    /* The next batch commits. */
    assert_int_equal(esim_store_batch_begin(st, NULL), ESIM_OK);
    assert_int_equal(exchange(st, "F1", "Idle", NULL, NULL, 0, 3005, next, NULL), ESIM_OK);
    assert_int_equal(esim_store_batch_commit(st, NULL), ESIM_OK);
    assert_int_equal(state_of(st, "f1", "F1"), STORE_Q_SENT);
    esim_store_close(st);
}

/* SQLite's memory statistics stay off (a global mutex per allocation):
 * with them on, the allocation count after an enrolment is above zero. */
static void test_sqlite_memory_statistics_off(void **state)
{
    (void)state;
    char path[600];
    store *st = open_fresh_sqlite(path);
    if (!st)
        skip();
    enroll(st, "M1", NULL);
    sqlite3_int64 now = -1, high = -1;
    assert_int_equal(sqlite3_status64(SQLITE_STATUS_MALLOC_COUNT, &now, &high, 0), SQLITE_OK);
    assert_int_equal(now, 0);
    assert_int_equal(sqlite3_status64(SQLITE_STATUS_MEMORY_USED, &now, &high, 0), SQLITE_OK);
    assert_int_equal(now, 0);
    esim_store_close(st);
}

/* A thread of test_sqlite_allocator: SQLite blocks of every kind made,
 * grown, shrunk and freed (some of another thread's), then the thread ends
 * with blocks on its lists (the sanitizers' leak check sees them returned). */
static void *sqlite_mem_worker(void *arg)
{
    void **theirs = arg;
    static const int sizes[] = {1, 15, 16, 17, 100, 1023, 1024, 1025, 4096, 5000, 70000};
    for (int round = 0; round < 3; round++) {
        void *p[sizeof sizes / sizeof sizes[0]];
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            p[i] = sqlite3_malloc(sizes[i]);
            assert_non_null(p[i]);
            assert_true(sqlite3_msize(p[i]) >= (sqlite3_uint64)sizes[i]);
            memset(p[i], 0xa5, (size_t)sizes[i]);
        }
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            /* Grown, then shrunk back: the old bytes kept both ways. */
            unsigned char *q = sqlite3_realloc(p[i], sizes[i] * 2 + 1);
            assert_non_null(q);
            for (int k = 0; k < sizes[i]; k++)
                assert_int_equal(q[k], 0xa5);
            q = sqlite3_realloc(q, sizes[i]);
            assert_non_null(q);
            for (int k = 0; k < sizes[i]; k++)
                assert_int_equal(q[k], 0xa5);
            p[i] = q;
        }
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
            sqlite3_free(p[i]);
    }
    for (int i = 0; i < 4; i++)
        sqlite3_free(theirs[i]);
    return NULL;
}

/* SQLite allocates through store_sqlite_mem.c (installed by the first
 * SQLite store opened): sizes rounded up to its classes of 16 bytes, a
 * freed block taken again by the next allocation of its class, blocks
 * freed on another thread than made them, and threads that end with
 * blocks kept (the debug build's leak check fails the test if they are
 * not returned). */
static void test_sqlite_allocator(void **state)
{
    (void)state;
    char path[600];
    store *st = open_fresh_sqlite(path);
    if (!st)
        skip();
    enroll(st, "A1", NULL);
    void *a = sqlite3_malloc(20);
    assert_non_null(a);
    assert_int_equal(sqlite3_msize(a), 32);
    sqlite3_free(a);
#if STORE_ASAN
    /* On the list it is as untouchable as a block malloc freed, but for
     * its link. */
    assert_true(__asan_address_is_poisoned((char *)a + sizeof(void *)));
    assert_true(__asan_address_is_poisoned((char *)a + 31));
#endif
    void *b = sqlite3_malloc(30);
    assert_ptr_equal(b, a); /* the block freed just before, from the list */
    sqlite3_free(b);
    /* A large block shrunk to under half moves to a block of its size; a
     * little less stays where it is. */
    void *big = sqlite3_malloc(4096);
    assert_non_null(big);
    void *less = sqlite3_realloc(big, 3000);
    assert_ptr_equal(less, big);
    assert_int_equal(sqlite3_msize(less), 4096);
    void *small = sqlite3_realloc(less, 100);
    assert_non_null(small);
    assert_int_equal(sqlite3_msize(small), 112);
    sqlite3_free(small);
    pthread_t t[2];
    void *theirs[2][4];
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < 4; k++)
            assert_non_null(theirs[i][k] = sqlite3_malloc(40 + 600 * k));
        assert_int_equal(pthread_create(&t[i], NULL, sqlite_mem_worker, theirs[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    /* The store still works on the blocks the lists hand out. */
    enroll(st, "A2", NULL);
    store_device d;
    assert_int_equal(esim_store_device_get(st, "A2", &d, NULL), ESIM_OK);
    assert_true(d.enrolled);
    esim_store_close(st);
}

int main(int argc, char **argv)
{
    const char *spec = argc > 1 ? argv[1] : getenv("ESIM_TEST_STORE");
    if (spec && *spec)
        snprintf(spec_template, sizeof spec_template, "%s", spec);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_specs),
        cmocka_unit_test(test_newer_schema_refused),
        cmocka_unit_test(test_identity_binding_and_checkout),
        cmocka_unit_test(test_enrolment_uses_indexes),
        cmocka_unit_test(test_sqlite_memory_statistics_off),
        cmocka_unit_test(test_sqlite_allocator),
        cmocka_unit_test(test_round_trip_statements),
        cmocka_unit_test(test_round_trip_queries),
        cmocka_unit_test(test_enqueue_queries),
        cmocka_unit_test(test_batch_requests_without_savepoints),
        cmocka_unit_test(test_batch_undone_by_sqlite),
        cmocka_unit_test(test_erase_reenrolment),
        cmocka_unit_test(test_enqueue_all_or_nothing),
        cmocka_unit_test(test_delivery_order_skip_expiry),
        cmocka_unit_test(test_anomalies_and_not_now),
        cmocka_unit_test(test_event_latest),
        cmocka_unit_test(test_batches),
        cmocka_unit_test(test_sub_journal_spill),
        cmocka_unit_test(test_group_sync),
        cmocka_unit_test(test_features),
        cmocka_unit_test(test_webhook_outbox),
        cmocka_unit_test(test_iot_devices_and_packages),
        cmocka_unit_test(test_iot_poll_waits_for_registration),
        cmocka_unit_test(test_checkin_waits_for_a_held_entry),
        cmocka_unit_test(test_iot_relay),
        cmocka_unit_test(test_iot_reads_use_indexes),
        cmocka_unit_test(test_instances),
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_campaign_records),
        cmocka_unit_test(test_campaign_state_compare_and_set),
        cmocka_unit_test(test_campaign_totals),
        cmocka_unit_test(test_imports_groups_tags_facts),
        cmocka_unit_test(test_tally_retro_bind_bootstrap),
        cmocka_unit_test(test_retire),
        cmocka_unit_test(test_audit_log),
        cmocka_unit_test(test_search_and_fleet_counts),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
