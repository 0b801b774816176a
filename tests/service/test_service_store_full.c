/*
 * test_service_store_full.c — issue 10's "the disk full": the service's
 * SQLite store on a small tmpfs of its own, filled while devices and an
 * admin keep working. Every answer is 200 or 503 (JSON for the API, with
 * Retry-After), nothing half-written is left (SQLite's integrity and
 * foreign-key checks, no command without its queue entries, no command
 * acknowledged twice, every command answered 200 delivered and
 * acknowledged), the log says when the store started failing and when it
 * recovered, and the service recovers by itself when space comes back.
 *
 * The tmpfs is mounted in a mount namespace of this process only, so it
 * goes away with the process whatever happens. That needs root (CI runs
 * `make test` as root); elsewhere the test is skipped.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "service/svc_harness.h"

#define NDEV 6
#define MAX_CMDS 4000

HARNESS_ENV_GROUP(env)

static char mnt[64];         /* the tmpfs */
static const char *no_tmpfs; /* why the test cannot run, or NULL */

/* Before any thread exists (unshare(CLONE_NEWNS) refuses a process with
 * several): a private mount namespace and an 8 MiB tmpfs in it. */
static void make_tmpfs(void)
{
    if (geteuid() != 0) {
        no_tmpfs = "not root: cannot mount a tmpfs";
        return;
    }
    if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        no_tmpfs = "no mount namespace";
        return;
    }
    snprintf(mnt, sizeof mnt, "/tmp/esim-full-XXXXXX");
    if (!mkdtemp(mnt) || mount("tmpfs", mnt, "tmpfs", 0, "size=8m,mode=0700") != 0) {
        no_tmpfs = "cannot mount a tmpfs";
        if (mnt[0])
            rmdir(mnt);
        mnt[0] = '\0';
    }
}

static void remove_tmpfs(void)
{
    if (!mnt[0])
        return;
    umount2(mnt, MNT_DETACH);
    rmdir(mnt);
}

/* Fills the tmpfs with |path| until the disk is full, then gives back
 * |spare| bytes so the store runs out a little later, under traffic. */
static void fill(const char *path, size_t spare)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    static char block[65536];
    memset(block, 0xa5, sizeof block);
    off_t size = 0;
    for (;;) {
        ssize_t w = write(fd, block, sizeof block);
        if (w <= 0) {
            assert_true(w == 0 || errno == ENOSPC);
            break;
        }
        size += w;
    }
    assert_int_equal(ftruncate(fd, size > (off_t)spare ? size - (off_t)spare : 0), 0);
    close(fd);
}

static bool has_text(const char *path, const char *needle)
{
    esim_buf b = {0};
    esim_read_file(path, 1 << 22, &b, NULL);
    esim_buf_append(&b, "", 1);
    bool yes = strstr((const char *)b.data, needle) != NULL;
    esim_buf_free(&b);
    return yes;
}

typedef struct {
    char uuids[MAX_CMDS][64]; /* commands the API answered 200 for */
    size_t n;
    long api_503, dev_503, dev_200;
} tally;

/* One enqueue to every device; a 503 must be the API's JSON error. */
static void enqueue_all(const char *url, const test_device *devs, tally *t)
{
    char body[1600];
    int n = snprintf(body, sizeof body, "{\"udids\": [");
    for (int i = 0; i < NDEV; i++)
        n += snprintf(body + n, sizeof body - (size_t)n, "%s\"%s\"", i ? "," : "", devs[i].udid);
    /* A long URL makes each command's rows larger: the disk fills sooner. */
    snprintf(body + n, sizeof body - (size_t)n,
             "], \"command\": {\"request_type\": \"RefreshCellularPlans\", \"esim_server_url\": "
             "\"https://smdp.example.com/%0600d\"}, \"push\": false}",
             0);
    json_t *r = NULL;
    long st = api_call(url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, &r);
    if (st == 200) {
        const char *u = json_string_value(json_object_get(r, "command_uuid"));
        assert_non_null(u);
        assert_true(t->n < MAX_CMDS);
        snprintf(t->uuids[t->n++], sizeof t->uuids[0], "%s", u);
    } else {
        if (st != 503)
            fail_msg("enqueue answered %ld", st);
        json_t *e = json_object_get(r, "error");
        assert_int_equal(json_integer_value(json_object_get(e, "status")), 503);
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "store"));
        t->api_503++;
    }
    json_decref(r);
}

/* A device works through its queue: Idle, then acknowledges each command
 * it gets. A 503 ends its turn (it comes back later, as devices do). */
static void device_turn(test_device *d, tally *t)
{
    char pending[128] = "";
    for (int k = 0; k < 50; k++) {
        esim_cmd_parsed next;
        long st = device_result(d, pending[0] ? ESIM_STATUS_ACKNOWLEDGED : ESIM_STATUS_IDLE,
                                pending[0] ? pending : NULL, &next);
        if (st == 503) {
            t->dev_503++;
            return;
        }
        if (st != 200)
            fail_msg("device answered %ld", st);
        t->dev_200++;
        pending[0] = '\0';
        if (!next.command_uuid[0]) {
            esim_cmd_parsed_free(&next);
            return;
        }
        snprintf(pending, sizeof pending, "%s", next.command_uuid);
        esim_cmd_parsed_free(&next);
    }
}

static void test_disk_full_under_traffic(void **state)
{
    (void)state;
    if (no_tmpfs) {
        print_message("skipped: %s\n", no_tmpfs);
        skip();
    }
    if (!harness_store_is_sqlite())
        skip(); /* the store is on another machine's disk */
    char log_path[400], filler[128];
    snprintf(log_path, sizeof log_path, "%s/store-full.log", env.dir);
    snprintf(filler, sizeof filler, "%s/filler", mnt);
    int log_fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0600);
    assert_true(log_fd >= 0);
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "full", &cfg, ts.data_dir);
    snprintf(ts.data_dir, sizeof ts.data_dir, "%s/data", mnt);
    cfg.data_dir = ts.data_dir;
    cfg.store = NULL;
    cfg.log_fd = log_fd;
    cfg.log_level = ESIM_LOG_INFO; /* store_recovered is info */
    cfg.access_log = false;
    harness_start(&ts, &cfg);
    test_device devs[NDEV];
    for (int i = 0; i < NDEV; i++) {
        char udid[65];
        snprintf(udid, sizeof udid, "00008130-0000000000FULL%02d", i);
        device_new(&devs[i], &env, udid, ts.url);
        device_enroll(&devs[i]);
    }
    static tally t;
    memset(&t, 0, sizeof t);
    enqueue_all(ts.url, devs, &t);
    assert_int_equal(t.n, 1);

    /* The disk fills while the admin enqueues and the devices answer. */
    fill(filler, 512 * 1024);
    int rounds = 0;
    for (; rounds < 3000 && (t.api_503 < 20 || t.dev_503 < 5); rounds++) {
        enqueue_all(ts.url, devs, &t);
        if (rounds % 4 == 0)
            for (int i = 0; i < NDEV; i++)
                device_turn(&devs[i], &t);
    }
    print_message("full: %d rounds, %zu enqueues kept, %ld refused (503); devices %ld answered, "
                  "%ld refused (503)\n",
                  rounds, t.n, t.api_503, t.dev_200, t.dev_503);
    assert_true(t.api_503 >= 20);
    assert_true(t.dev_503 >= 1);
    assert_true(has_text(log_path, "event=store_failing"));
    assert_true(has_text(log_path, "full"));
    assert_true(api_metric(ts.url, "esim_mdm_store_errors_total") >= t.api_503);

    /* Space comes back: the service recovers by itself. */
    assert_int_equal(unlink(filler), 0);
    size_t kept_before = t.n;
    long refused_before = t.api_503 + t.dev_503;
    for (int i = 0; i < 5; i++)
        enqueue_all(ts.url, devs, &t);
    for (int i = 0; i < NDEV; i++)
        device_turn(&devs[i], &t);
    assert_int_equal(t.n, kept_before + 5);
    assert_int_equal(t.api_503 + t.dev_503, refused_before);
    assert_true(has_text(log_path, "event=store_recovered"));
    esim_buf lines = {0};
    esim_read_file(log_path, 1 << 20, &lines, NULL);
    print_message("%.*s", (int)lines.len, (const char *)lines.data);
    esim_buf_free(&lines);

    /* Every command answered 200 reached every device and was
     * acknowledged; nothing was half-written. */
    for (size_t c = 0; c < t.n; c++)
        for (int i = 0; i < NDEV; i++) {
            char st[32];
            api_entry_state(ts.url, t.uuids[c], devs[i].udid, st, NULL, NULL);
            if (strcmp(st, "acknowledged") != 0)
                fail_msg("command %s on %s: %s", t.uuids[c], devs[i].udid, st);
        }
    char out[64];
    harness_store_query(&cfg, "PRAGMA integrity_check", out, sizeof out);
    assert_string_equal(out, "ok");
    assert_int_equal(
        harness_store_query(&cfg, "SELECT count(*) FROM pragma_foreign_key_check", NULL, 0), 0);
    assert_int_equal(harness_store_query(&cfg, "SELECT count(*) FROM commands", NULL, 0),
                     (long)t.n);
    assert_int_equal(harness_store_query(&cfg,
                                         "SELECT count(*) FROM commands c WHERE (SELECT count(*) "
                                         "FROM queue q WHERE q.command_uuid = c.uuid) != 6",
                                         NULL, 0),
                     0);
    assert_int_equal(harness_store_query(&cfg,
                                         "SELECT count(*) FROM (SELECT 1 FROM events WHERE kind = "
                                         "'result' AND detail = 'Acknowledged' GROUP BY udid, "
                                         "command_uuid HAVING count(*) > 1)",
                                         NULL, 0),
                     0);
    for (int i = 0; i < NDEV; i++)
        device_free(&devs[i]);
    harness_stop(&ts);
    close(log_fd);
}

int main(void)
{
    make_tmpfs();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disk_full_under_traffic),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    remove_tmpfs();
    return rc;
}
