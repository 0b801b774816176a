/*
 * test_service_access.c — who may use the admin API, over loopback: API
 * keys with roles (read-only, operator, admin) beside the single API token,
 * the same rule on the service's routes and on the modules' (campaigns),
 * retiring a device, the audit log of admin actions read through the API,
 * repeated failed authentication locked out per address, keys replaced at
 * run time, and the keys file's parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "service/svc_harness.h"

#define READER_TOKEN "reader-token-aaaaaaaaaaaa"
#define OPERATOR_TOKEN "operator-token-bbbbbbbbbb"
#define BOSS_TOKEN "boss-token-cccccccccccccccc"

HARNESS_ENV_GROUP(env)

static const esim_api_key keys[] = {
    {"reader", READER_TOKEN, ESIM_ROLE_READ_ONLY},
    {"ops-team", OPERATOR_TOKEN, ESIM_ROLE_OPERATOR},
    {"boss", BOSS_TOKEN, ESIM_ROLE_ADMIN},
};

static void start_with_keys(test_service *ts, const char *name)
{
    esim_service_config cfg;
    harness_config(&env, name, &cfg, ts->data_dir);
    cfg.api_keys = keys;
    cfg.n_api_keys = 3;
    harness_start(ts, &cfg);
}

static const char *error_message(json_t *r)
{
    return json_string_value(json_object_get(json_object_get(r, "error"), "message"));
}

static void test_roles_on_every_route(void **state)
{
    (void)state;
    test_service ts = {0};
    start_with_keys(&ts, "roles");
    test_device d;
    device_new(&d, &env, "ROLE-DEVICE-1", ts.url);
    device_enroll(&d);
    const char *cmd = "{\"udids\":[\"ROLE-DEVICE-1\"],\"command\":{\"request_type\":"
                      "\"DeviceInformation\",\"queries\":[\"EID\"]},\"push\":false}";

    /* Read-only reads, and nothing more: its refusals are JSON and say why. */
    assert_int_equal(api_call(ts.url, READER_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL), 200);
    assert_int_equal(
        api_call(ts.url, READER_TOKEN, "GET", "/v1/devices/ROLE-DEVICE-1", NULL, NULL, NULL), 200);
    json_t *r = NULL;
    assert_int_equal(api_call(ts.url, READER_TOKEN, "POST", "/v1/commands", cmd, NULL, &r), 403);
    assert_non_null(strstr(error_message(r), "read-only"));
    assert_non_null(strstr(error_message(r), "operator"));
    json_decref(r);
    assert_int_equal(
        api_call(ts.url, READER_TOKEN, "POST", "/v1/push/ROLE-DEVICE-1", "", NULL, NULL), 403);
    assert_int_equal(
        api_call(ts.url, READER_TOKEN, "GET", "/v1/push/ROLE-DEVICE-1", NULL, NULL, NULL), 403);
    /* A module's routes (campaigns) follow the same rule. */
    assert_int_equal(api_call(ts.url, READER_TOKEN, "GET", "/v1/campaigns", NULL, NULL, NULL), 200);
    assert_int_equal(api_call(ts.url, READER_TOKEN, "POST", "/v1/groups",
                              "{\"name\":\"g1\",\"udids\":[\"ROLE-DEVICE-1\"]}", NULL, NULL),
                     403);
    assert_int_equal(api_call(ts.url, READER_TOKEN, "GET", "/v1/audit", NULL, NULL, NULL), 403);

    /* Operator changes things, but neither retires nor reads the audit log. */
    assert_int_equal(api_call(ts.url, OPERATOR_TOKEN, "POST", "/v1/commands", cmd, NULL, NULL),
                     200);
    assert_int_equal(api_call(ts.url, OPERATOR_TOKEN, "POST", "/v1/commands", "{}", NULL, NULL),
                     400);
    assert_int_equal(api_call(ts.url, OPERATOR_TOKEN, "POST", "/v1/groups",
                              "{\"name\":\"g1\",\"udids\":[\"ROLE-DEVICE-1\"]}", NULL, NULL),
                     201);
    assert_int_equal(
        api_call(ts.url, OPERATOR_TOKEN, "DELETE", "/v1/devices/ROLE-DEVICE-1", NULL, NULL, NULL),
        403);
    assert_int_equal(api_call(ts.url, OPERATOR_TOKEN, "GET", "/v1/audit", NULL, NULL, NULL), 403);

    /* Admin retires the device: no longer enrolled, its queue closed. */
    assert_int_equal(
        api_call(ts.url, BOSS_TOKEN, "DELETE", "/v1/devices/NO-SUCH-DEVICE", NULL, NULL, &r), 404);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "field")),
                        "udid");
    json_decref(r);
    assert_int_equal(
        api_call(ts.url, BOSS_TOKEN, "DELETE", "/v1/devices/ROLE-DEVICE-1", NULL, NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(r, "state")), "retired");
    json_decref(r);
    assert_int_equal(
        api_call(ts.url, READER_TOKEN, "GET", "/v1/devices/ROLE-DEVICE-1", NULL, NULL, &r), 200);
    assert_true(json_is_false(json_object_get(r, "enrolled")));
    json_decref(r);
    assert_int_equal(
        api_call(ts.url, READER_TOKEN, "GET", "/v1/devices/ROLE-DEVICE-1/queue", NULL, NULL, &r),
        200);
    assert_int_equal(json_array_size(json_object_get(r, "queue")), 0);
    json_decref(r);
    /* The retired device is refused until it enrols again. */
    assert_true(device_result(&d, ESIM_STATUS_IDLE, NULL, NULL) >= 400);

    /* The single API token is an admin key, and Basic auth works for any key. */
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/audit", NULL, NULL, &r), 200);
    json_t *entries = json_object_get(r, "entries");
    /* Changes are audited, and every refusal for lack of a role; reads are not. */
    const char *expect[][4] = {
        {"reader", "POST", "/v1/commands", "403"},
        {"reader", "POST", "/v1/push/ROLE-DEVICE-1", "403"},
        {"reader", "GET", "/v1/push/ROLE-DEVICE-1", "403"},
        {"reader", "POST", "/v1/groups", "403"},
        {"reader", "GET", "/v1/audit", "403"},
        {"ops-team", "POST", "/v1/commands", "200"},
        {"ops-team", "POST", "/v1/commands", "400"},
        {"ops-team", "POST", "/v1/groups", "201"},
        {"ops-team", "DELETE", "/v1/devices/ROLE-DEVICE-1", "403"},
        {"ops-team", "GET", "/v1/audit", "403"},
        {"boss", "DELETE", "/v1/devices/NO-SUCH-DEVICE", "404"},
        {"boss", "DELETE", "/v1/devices/ROLE-DEVICE-1", "200"},
    };
    size_t n_expect = sizeof expect / sizeof expect[0];
    if (json_array_size(entries) != n_expect) {
        char *dump = json_dumps(entries, JSON_INDENT(1));
        fprintf(stderr, "%s\n", dump);
        free(dump);
    }
    assert_int_equal(json_array_size(entries), n_expect);
    for (size_t i = 0; i < n_expect; i++) {
        json_t *a = json_array_get(entries, i);
        assert_string_equal(json_string_value(json_object_get(a, "who")), expect[i][0]);
        assert_string_equal(json_string_value(json_object_get(a, "method")), expect[i][1]);
        assert_string_equal(json_string_value(json_object_get(a, "target")), expect[i][2]);
        assert_int_equal(json_integer_value(json_object_get(a, "status")), atoi(expect[i][3]));
        assert_true(json_is_string(json_object_get(a, "at")));
    }
    assert_string_equal(json_string_value(json_object_get(json_array_get(entries, 5), "role")),
                        "operator");
    assert_non_null(
        strstr(json_string_value(json_object_get(json_array_get(entries, 6), "detail")), "udids"));
    /* No secret ever lands in the audit log. */
    char *text = json_dumps(r, 0);
    assert_null(strstr(text, READER_TOKEN));
    assert_null(strstr(text, OPERATOR_TOKEN));
    assert_null(strstr(text, BOSS_TOKEN));
    free(text);
    json_decref(r);
    /* Paging. */
    assert_int_equal(api_call(ts.url, BOSS_TOKEN, "GET", "/v1/audit?limit=4", NULL, NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r, "entries")), 4);
    json_int_t next = json_integer_value(json_object_get(r, "next_after"));
    json_decref(r);
    char path[64];
    snprintf(path, sizeof path, "/v1/audit?after=%lld&limit=100", (long long)next);
    assert_int_equal(api_call(ts.url, BOSS_TOKEN, "GET", path, NULL, NULL, &r), 200);
    assert_int_equal(json_array_size(json_object_get(r, "entries")), n_expect - 4);
    assert_true(json_is_null(json_object_get(r, "next_after")));
    json_decref(r);
    assert_int_equal(api_call(ts.url, BOSS_TOKEN, "GET", "/v1/audit?limit=0", NULL, NULL, NULL),
                     400);
    assert_int_equal(api_call(ts.url, BOSS_TOKEN, "GET", "/v1/audit?after=x", NULL, NULL, NULL),
                     400);
    device_free(&d);
    harness_stop(&ts);
}

static void test_role_rule(void **state)
{
    (void)state;
    assert_int_equal(esim_api_role_needed("GET", "/v1/devices"), ESIM_ROLE_READ_ONLY);
    assert_int_equal(esim_api_role_needed("HEAD", "/v1/campaigns/x"), ESIM_ROLE_READ_ONLY);
    assert_int_equal(esim_api_role_needed("GET", "/v1/audit"), ESIM_ROLE_ADMIN);
    assert_int_equal(esim_api_role_needed("POST", "/v1/commands"), ESIM_ROLE_OPERATOR);
    assert_int_equal(esim_api_role_needed("GET", "/v1/push/a,b"), ESIM_ROLE_OPERATOR);
    assert_int_equal(esim_api_role_needed("DELETE", "/v1/devices/X"), ESIM_ROLE_ADMIN);
    assert_int_equal(esim_api_role_needed("DELETE", "/v1/devices/X/queue/C"), ESIM_ROLE_OPERATOR);
    assert_int_equal(esim_api_role_needed("PUT", "/v1/pushcert"), ESIM_ROLE_ADMIN);
    assert_int_equal(esim_api_role_needed("GET", "/v1/pushcert"), ESIM_ROLE_READ_ONLY);
    assert_int_equal(esim_api_role_needed("PUT", "/migration"), ESIM_ROLE_ADMIN);
    assert_int_equal(esim_api_role_needed(NULL, "/v1/devices"), ESIM_ROLE_ADMIN);
    esim_role role;
    assert_int_equal(esim_role_parse("read-only", &role, NULL), ESIM_OK);
    assert_int_equal(role, ESIM_ROLE_READ_ONLY);
    assert_int_equal(esim_role_parse("root", &role, NULL), ESIM_EINVAL);
    assert_string_equal(esim_role_name(ESIM_ROLE_OPERATOR), "operator");
}

static void test_failed_authentication_locked_out(void **state)
{
    (void)state;
    test_service ts = {0};
    start_with_keys(&ts, "lockout");
    /* No key at all is a client not set up yet: never locked out. */
    for (int i = 0; i < 8; i++)
        assert_int_equal(api_call(ts.url, NULL, "GET", "/v1/devices", NULL, NULL, NULL), 401);
    /* Five wrong keys are answered 401; then the address waits. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(
            api_call(ts.url, "wrong-key-0123456789", "GET", "/v1/devices", NULL, NULL, NULL), 401);
    json_t *r = NULL;
    assert_int_equal(api_call(ts.url, READER_TOKEN, "GET", "/v1/devices", NULL, NULL, &r), 429);
    assert_non_null(strstr(error_message(r), "too many failed authentications from 127.0.0.1"));
    json_decref(r);
    assert_true(api_metric(ts.url, "esim_mdm_api_auth_total{result=\"throttled\"}") >= 1);
    assert_true(api_metric(ts.url, "esim_mdm_api_auth_total{result=\"refused\"}") >= 13);
    /* The first lockout is a second long: then a good key works again. */
    for (int tries = 0; tries < 40; tries++) {
        long st = api_call(ts.url, READER_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL);
        if (st == 200)
            break;
        assert_int_equal(st, 429);
        usleep(100 * 1000);
    }
    assert_int_equal(api_call(ts.url, READER_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL), 200);
    harness_stop(&ts);
}

static void test_keys_replaced_at_run_time(void **state)
{
    (void)state;
    test_service ts = {0};
    start_with_keys(&ts, "replace");
    esim_api_key next[] = {{"new-reader", "new-reader-token-dddddddd", ESIM_ROLE_READ_ONLY}};
    esim_error e;
    /* A bad set is refused and the old keys stay. */
    esim_api_key twice[] = {next[0], next[0]};
    assert_int_equal(esim_service_set_api_keys(ts.svc, TEST_TOKEN, twice, 2, &e), ESIM_EINVAL);
    assert_int_equal(api_call(ts.url, READER_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL), 200);
    esim_api_key short_token[] = {{"x", "short", ESIM_ROLE_ADMIN}};
    assert_int_equal(esim_service_set_api_keys(ts.svc, NULL, short_token, 1, &e), ESIM_EINVAL);
    assert_null(strstr(e.msg, "short"));
    assert_int_equal(esim_service_set_api_keys(ts.svc, NULL, next, 1, &e), ESIM_OK);
    assert_int_equal(api_call(ts.url, READER_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL), 401);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL), 401);
    assert_int_equal(
        api_call(ts.url, "new-reader-token-dddddddd", "GET", "/v1/devices", NULL, NULL, NULL), 200);
    harness_stop(&ts);
}

static size_t sink(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

/* GET |path| with |token| on the handle's connection; the status, and in
 * *new_conns how many connections it had to open. */
static long keepalive_get(CURL *c, const char *url, const char *path, const char *token,
                          long *new_conns)
{
    char full[256], auth[256];
    snprintf(full, sizeof full, "%s%s", url, path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, new_conns);
    curl_slist_free_all(h);
    return status;
}

/* esim_service_reload (what SIGHUP does): new keys apply to the next
 * request on a connection that stays open; a bad configuration changes
 * nothing; settings only a restart changes are named. */
static void test_reload_keeps_connections(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "reload", &cfg, ts.data_dir);
    cfg.api_keys = keys;
    cfg.n_api_keys = 3;
    harness_start(&ts, &cfg);
    CURL *c = curl_easy_init();
    long conns = 0;
    assert_int_equal(keepalive_get(c, ts.url, "/v1/devices", READER_TOKEN, &conns), 200);
    assert_int_equal(conns, 1);

    esim_service_config next;
    harness_config(&env, "reload", &next, ts.data_dir);
    esim_api_key fresh[] = {{"fresh", "fresh-token-eeeeeeeeeeee", ESIM_ROLE_READ_ONLY}};
    next.api_keys = fresh;
    next.n_api_keys = 1;
    char restart[256];
    esim_error e;
    /* Bad: a device CA that is not there. Nothing changes. */
    next.device_ca_path = "/nonexistent/ca.pem";
    assert_int_not_equal(esim_service_reload(ts.svc, &next, restart, sizeof restart, &e), ESIM_OK);
    assert_int_equal(keepalive_get(c, ts.url, "/v1/devices", READER_TOKEN, &conns), 200);
    assert_int_equal(conns, 0);
    /* Good, with a new listen address: applied, except the address. */
    harness_config(&env, "reload", &next, ts.data_dir);
    next.api_keys = fresh;
    next.n_api_keys = 1;
    next.listen = "127.0.0.1:1";
    assert_int_equal(esim_service_reload(ts.svc, &next, restart, sizeof restart, &e), ESIM_OK);
    assert_string_equal(restart, "listen");
    assert_int_equal(keepalive_get(c, ts.url, "/v1/devices", READER_TOKEN, &conns), 401);
    assert_int_equal(keepalive_get(c, ts.url, "/v1/devices", "fresh-token-eeeeeeeeeeee", &conns),
                     200);
    assert_int_equal(conns, 0); /* the same connection all along */
    assert_int_equal(keepalive_get(c, ts.url, "/v1/devices", TEST_TOKEN, &conns), 200);
    curl_easy_cleanup(c);
    harness_stop(&ts);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_keys_file(void **state)
{
    (void)state;
    char path[400];
    snprintf(path, sizeof path, "%s/keys", env.dir);
    esim_api_key *k = NULL;
    size_t n = 0;
    esim_error e;
    write_file(path,
               "# name role token\n\nreader read-only " READER_TOKEN "\n"
               "  ops\toperator\t" OPERATOR_TOKEN "  \r\n"
               "boss admin " BOSS_TOKEN "\n",
               0600);
    assert_int_equal(esim_api_keys_load(path, &k, &n, &e), ESIM_OK);
    assert_int_equal(n, 3);
    assert_string_equal(k[1].name, "ops");
    assert_string_equal(k[1].token, OPERATOR_TOKEN);
    assert_int_equal(k[1].role, ESIM_ROLE_OPERATOR);
    assert_int_equal(k[2].role, ESIM_ROLE_ADMIN);
    esim_api_keys_free(k, n);
    /* Readable by others: refused, naming the fix. */
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(esim_api_keys_load(path, &k, &n, &e), ESIM_EAUTH);
    assert_non_null(strstr(e.msg, "chmod"));
    static const char *const bad[] = {
        "reader root " READER_TOKEN "\n",
        "reader read-only\n",
        "reader read-only " READER_TOKEN " extra\n",
        "a read-only " READER_TOKEN "\nb admin " READER_TOKEN "\n",
        "a read-only " READER_TOKEN "\na admin " BOSS_TOKEN "\n",
        "a admin short\n",
        "bad/name admin " BOSS_TOKEN "\n",
        "# only a comment\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_file(path, bad[i], 0600);
        assert_int_equal(esim_api_keys_load(path, &k, &n, &e), ESIM_EINVAL);
        assert_null(k);
        /* Errors name the key, never its token. */
        assert_null(strstr(e.msg, READER_TOKEN));
        assert_null(strstr(e.msg, BOSS_TOKEN));
    }
    unlink(path);
    assert_int_equal(esim_api_keys_load(path, &k, &n, &e), ESIM_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_role_rule),
        cmocka_unit_test(test_keys_file),
        cmocka_unit_test(test_roles_on_every_route),
        cmocka_unit_test(test_failed_authentication_locked_out),
        cmocka_unit_test(test_keys_replaced_at_run_time),
        cmocka_unit_test(test_reload_keeps_connections),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
