/*
 * test_service_api.c — the admin side of the MDM service over loopback: API
 * authentication, validation (the field named, nothing enqueued), the
 * restrictions composer, cancel and expiry, a restart with a non-empty
 * queue, webhook delivery with retry and HMAC, and pushes through the APNs
 * mock (one per device per call).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <openssl/hmac.h>

#include "apns/apns_mock.h"
#include "service/svc_harness.h"

HARNESS_ENV_GROUP(env)
static int counter;

static void next_udid(char udid[65])
{
    snprintf(udid, 65, "00008120-%016d", ++counter);
}

static size_t queue_len(const char *url, const char *udid)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/devices/%s/queue", udid);
    json_t *q = NULL;
    assert_int_equal(api_call(url, TEST_TOKEN, "GET", path, NULL, NULL, &q), 200);
    size_t n = json_array_size(json_object_get(q, "queue"));
    json_decref(q);
    return n;
}

/* Asserts |status| and that the JSON error names |field|. */
static void expect_error(const char *url, const char *body, long status, const char *field)
{
    json_t *r = NULL;
    assert_int_equal(api_call(url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, &r), status);
    json_t *e = json_object_get(r, "error");
    assert_non_null(e);
    assert_true(json_is_string(json_object_get(e, "message")));
    if (field)
        assert_string_equal(json_string_value(json_object_get(e, "field")), field);
    json_decref(r);
}

static void test_api_requires_token(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "auth", &cfg, ts.data_dir);
    harness_start(&ts, &cfg);
    assert_int_equal(api_call(ts.url, NULL, "GET", "/v1/devices", NULL, NULL, NULL), 401);
    assert_int_equal(api_call(ts.url, "wrong-token", "GET", "/v1/devices", NULL, NULL, NULL), 401);
    assert_int_equal(api_call(ts.url, TEST_TOKEN "x", "GET", "/v1/devices", NULL, NULL, NULL), 401);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL), 200);
    assert_int_equal(api_call(ts.url, NULL, "POST", "/v1/commands", "{}", NULL, NULL), 401);
    /* Health and metrics are open; unknown paths are 404, wrong methods 405. */
    assert_int_equal(api_call(ts.url, NULL, "GET", "/healthz", NULL, NULL, NULL), 200);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/nothing", NULL, NULL, NULL), 404);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "PUT", "/v1/devices", "", NULL, NULL), 405);
    harness_stop(&ts);
}

/* ---- every error is the same JSON object ---- */

typedef struct {
    const char *method, *path, *token, *content_type;
    size_t body_len; /* 0: no body; the body is that many '{' */
    bool chunked;
    long status;
    const char *allow; /* the Allow header a 405 carries, or NULL */
    const char *words; /* in the message */
} error_case;

static size_t header_cb(char *line, size_t size, size_t n, void *arg)
{
    char *allow = arg;
    size_t len = size * n;
    if (len > 7 && strncasecmp(line, "Allow: ", 7) == 0)
        snprintf(allow, 64, "%.*s", (int)(len - 9 > 60 ? 60 : len - 9), line + 7);
    return len;
}

static size_t body_cb(char *data, size_t size, size_t n, void *arg)
{
    esim_buf_append(arg, data, size * n);
    return size * n;
}

/* Runs |c| and checks the answer: its status, application/json, and
 * {"error": {"status": N, "message": "..."}} with the same N. */
static void check_error_case(const char *url, const error_case *c, const char *big)
{
    CURL *h = curl_easy_init();
    char full[512], auth[160], allow[64] = "";
    snprintf(full, sizeof full, "%s%s", url, c->path);
    struct curl_slist *hd = NULL;
    if (c->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        hd = curl_slist_append(hd, auth);
    }
    if (c->content_type) {
        char ct[128];
        snprintf(ct, sizeof ct, "Content-Type: %s", c->content_type);
        hd = curl_slist_append(hd, ct);
    }
    if (c->chunked)
        hd = curl_slist_append(hd, "Transfer-Encoding: chunked");
    esim_buf reply = {0};
    curl_easy_setopt(h, CURLOPT_URL, full);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, c->method);
    if (strcmp(c->method, "HEAD") == 0)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    if (c->body_len) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, big);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, c->chunked ? -1L : (long)c->body_len);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, (void *)allow);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, body_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &reply);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
    CURLcode rc = curl_easy_perform(h);
    long status = 0;
    char *ctype = NULL;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ctype);
    if (rc != CURLE_OK && status == 0)
        fail_msg("%s %s: %s", c->method, c->path, curl_easy_strerror(rc));
    if (status != c->status)
        fail_msg("%s %s: %ld, not %ld: %.*s", c->method, c->path, status, c->status, (int)reply.len,
                 (const char *)reply.data);
    if (!ctype || strncmp(ctype, "application/json", 16) != 0)
        fail_msg("%s %s: Content-Type %s", c->method, c->path, ctype ? ctype : "none");
    if (strcmp(c->method, "HEAD") != 0) {
        json_t *j = json_loadb((const char *)reply.data, reply.len, 0, NULL);
        json_t *e = json_object_get(j, "error");
        if (!json_is_object(e) || json_integer_value(json_object_get(e, "status")) != status)
            fail_msg("%s %s: not the error object: %.*s", c->method, c->path, (int)reply.len,
                     (const char *)reply.data);
        const char *msg = json_string_value(json_object_get(e, "message"));
        assert_non_null(msg);
        /* One style: a lower-case start (or a name: API, HTTP...), no final full stop. */
        if (!(msg[0] >= 'a' && msg[0] <= 'z') && strncmp(msg, "API", 3) != 0 &&
            strncmp(msg, "GET", 3) != 0 && strncmp(msg, "PUT", 3) != 0 &&
            strncmp(msg, "OPTIONS", 7) != 0 && strncmp(msg, "TRACE", 5) != 0 &&
            strncmp(msg, "PATCH", 5) != 0)
            fail_msg("%s %s: message style: %s", c->method, c->path, msg);
        assert_int_not_equal(msg[strlen(msg) - 1], '.');
        if (c->words && !strstr(msg, c->words))
            fail_msg("%s %s: '%s' lacks '%s'", c->method, c->path, msg, c->words);
        json_decref(j);
    }
    if (c->allow)
        assert_string_equal(allow, c->allow);
    esim_buf_free(&reply);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
}

static void test_api_errors_are_json(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "errors", &cfg, ts.data_dir);
    cfg.max_body = 4096;
    esim_api_key keys[] = {{"reader", "reader-token-0123456789", ESIM_ROLE_READ_ONLY}};
    cfg.api_keys = keys;
    cfg.n_api_keys = 1;
    harness_start(&ts, &cfg);
    static char big[8192];
    memset(big, '{', sizeof big - 1);
    const char *T = TEST_TOKEN;
    const error_case cases[] = {
        {"GET", "/v1/devices", NULL, NULL, 0, false, 401, NULL, "token"},
        {"GET", "/v1/devices", "wrong-token-0000000000", NULL, 0, false, 401, NULL, "token"},
        {"POST", "/v1/commands", "reader-token-0123456789", "application/json", 2, false, 403, NULL,
         "role"},
        {"GET", "/v1/nothing", T, NULL, 0, false, 404, NULL, "no such endpoint"},
        {"GET", "/nothing-at-all", NULL, NULL, 0, false, 404, NULL, "no such endpoint"},
        {"GET", "/v1/devices/00008130-0000000000000099", T, NULL, 0, false, 404, NULL, NULL},
        {"GET", "/v1/commands/no-such-command", T, NULL, 0, false, 404, NULL, NULL},
        {"PUT", "/v1/devices", T, NULL, 0, false, 405, "GET", "use GET"},
        {"OPTIONS", "/v1/devices", T, NULL, 0, false, 405, "GET", "use GET"},
        {"TRACE", "/v1/commands", T, NULL, 0, false, 405, "POST", "use POST"},
        {"PATCH", "/healthz", NULL, NULL, 0, false, 405, "GET", NULL},
        {"POST", "/v1/commands", T, "application/json", 5, false, 400, NULL, "JSON"},
        {"POST", "/v1/commands", T, "application/json", 5000, false, 413, NULL, "size limit"},
        {"POST", "/v1/commands", T, "application/json", 5000, true, 413, NULL, "size limit"},
        {"PUT", "/v1/enqueue/00008130-0000000000000099", T, "application/xml", 5000, false, 413,
         NULL, "size limit"},
        {"DELETE", "/v1/devices/00008130-0000000000000099/queue/x", T, NULL, 0, false, 404, NULL,
         NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_error_case(ts.url, &cases[i], big);
    harness_stop(&ts);
}

static void test_api_validation_names_field_and_enqueues_nothing(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "validation", &cfg, ts.data_dir);
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev);
    char body[1024];

    expect_error(ts.url, "{\"udids\": [", 400, NULL);
    expect_error(ts.url, "[]", 400, NULL);
    expect_error(ts.url, "{\"command\":{\"request_type\":\"ProfileList\"}}", 400, "udids");
    snprintf(body, sizeof body, "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"Reboot\"}}",
             udid);
    expect_error(ts.url, body, 400, "command.request_type");
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"RefreshCellularPlans\","
             "\"esim_server_url\":\"ftp://smdp.example.com\"}}",
             udid);
    expect_error(ts.url, body, 400, "command.esim_server_url");
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"RefreshCellularPlans\"}}", udid);
    expect_error(ts.url, body, 400, "command.esim_server_url");
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"RefreshCellularPlans\","
             "\"esim_server_url\":\"smdp.example.com\",\"esim_srever\":1}}",
             udid);
    expect_error(ts.url, body, 400, "command.esim_srever");
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"InstallProfile\","
             "\"restrictions\":{\"esim_modification\":\"maybe\"}}}",
             udid);
    expect_error(ts.url, body, 400, "command.restrictions.esim_modification");
    snprintf(
        body, sizeof body,
        "{\"udids\":[\"%s\"],\"command\":{\"request_type\":\"DeviceInformation\",\"queries\":[]}}",
        udid);
    expect_error(ts.url, body, 400, "command.queries");
    snprintf(
        body, sizeof body,
        "{\"udids\":[\"%s\"],\"priority\":\"high\",\"command\":{\"request_type\":\"ProfileList\"}}",
        udid);
    expect_error(ts.url, body, 400, "priority");
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\", \"bad udid!\"],\"command\":{\"request_type\":\"ProfileList\"}}",
             udid);
    expect_error(ts.url, body, 400, "udids[1]");
    /* A well-formed UDID nobody enrolled: 404, and the known device got nothing either. */
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\", "
             "\"00008120-FFFFFFFFFFFFFFFF\"],\"command\":{\"request_type\":\"ProfileList\"}}",
             udid);
    expect_error(ts.url, body, 404, "udids");
    assert_int_equal(queue_len(ts.url, udid), 0);
    /* Raw enqueue of something that is not a command: 400, nothing queued. */
    char path[160];
    snprintf(path, sizeof path, "/v1/enqueue/%s", udid);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "PUT", path, "<plist><dict/></plist>",
                              "application/xml", NULL),
                     400);
    assert_int_equal(queue_len(ts.url, udid), 0);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/devices/00008120-FFFFFFFFFFFFFFFF",
                              NULL, NULL, NULL),
                     404);
    device_free(&dev);
    harness_stop(&ts);
}

/* Text that is not UTF-8: route parameters and query values get a 400
 * naming the field (never "500 out of memory"), and a raw enqueue whose
 * CommandUUID or RequestType is not UTF-8 stores and pushes nothing. */
static void test_text_that_is_not_utf8(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "utf8", &cfg, ts.data_dir);
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev);

    static const struct {
        const char *method, *path, *field;
    } cases[] = {
        {"GET", "/v1/devices/%FF", "udid"},
        {"GET", "/v1/devices/%C3%28/queue", "udid"},
        {"GET", "/v1/devices/%ED%A0%80/events", "udid"},
        {"GET", "/v1/commands/%C0%AF", "command_uuid"},
        {"DELETE", "/v1/devices/00008120-0000000000000001/queue/%FE", "command_uuid"},
        {"POST", "/v1/push/%F5%80%80%80", "udids"},
        {"PUT", "/v1/enqueue/%FF", "udids"},
        {"GET", "/v1/devices?after=%FF", "after"},
        {"GET", "/v1/commands/x?after=%E2%82", "after"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *r = NULL;
        long code = api_call(ts.url, TEST_TOKEN, cases[i].method, cases[i].path,
                             strcmp(cases[i].method, "GET") ? "" : NULL, NULL, &r);
        if (code != 400)
            fail_msg("%s %s: %ld", cases[i].method, cases[i].path, code);
        json_t *e = json_object_get(r, "error");
        assert_string_equal(json_string_value(json_object_get(e, "field")), cases[i].field);
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "UTF-8"));
        json_decref(r);
    }
    /* Valid UTF-8 that is no UDID is still a plain 404. */
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/devices/%C3%A9", NULL, NULL, NULL),
                     404);
    /* An unknown path quoting bytes that are not UTF-8: a JSON 404. */
    json_t *r = NULL;
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/nothing\xff", NULL, NULL, &r), 404);
    assert_non_null(json_object_get(r, "error"));
    json_decref(r);

    /* Raw enqueue: a CommandUUID that is not UTF-8 is refused before
     * anything is stored or pushed. */
    long long enqueued = api_metric(ts.url, "esim_mdm_commands_enqueued_total");
    long long pushes = api_metric(ts.url, "esim_mdm_pushes_total{outcome=\"pending\"}");
    static const char bad_uuid[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><plist version=\"1.0\"><dict>"
        "<key>CommandUUID</key><string>bad-\xff-uuid</string>"
        "<key>Command</key><dict><key>RequestType</key><string>ProfileList</string></dict>"
        "</dict></plist>";
    static const char bad_type[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><plist version=\"1.0\"><dict>"
        "<key>CommandUUID</key><string>6f2c4e1a-0000-4000-8000-000000000001</string>"
        "<key>Command</key><dict><key>RequestType</key><string>Profile\xc3List</string></dict>"
        "</dict></plist>";
    char path[160];
    snprintf(path, sizeof path, "/v1/enqueue/%s", udid);
    const char *bodies[] = {bad_uuid, bad_type};
    for (size_t i = 0; i < 2; i++) {
        r = NULL;
        assert_int_equal(
            api_call(ts.url, TEST_TOKEN, "PUT", path, bodies[i], "application/xml", &r), 400);
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(r, "error"), "field")), "body");
        json_decref(r);
    }
    assert_int_equal(queue_len(ts.url, udid), 0);
    assert_int_equal(api_metric(ts.url, "esim_mdm_commands_enqueued_total"), enqueued);
    assert_int_equal(api_metric(ts.url, "esim_mdm_pushes_total{outcome=\"pending\"}"), pushes);
    device_free(&dev);
    harness_stop(&ts);
}

static void test_restrictions_become_install_profile(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "restrictions", &cfg, ts.data_dir);
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev);
    char body[512];
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"push\":false,\"command\":{\"request_type\":\"InstallProfile\","
             "\"restrictions\":{\"esim_modification\":\"deny\",\"preserve_esim_on_erase\":true,"
             "\"esim_outgoing_transfers\":\"deny\"}}}",
             udid);
    json_t *r = NULL;
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, &r), 200);
    json_t *d = json_object_get(json_object_get(r, "devices"), udid);
    assert_true(json_is_true(json_object_get(d, "queued")));
    assert_string_equal(json_string_value(json_object_get(d, "push")), "skipped");
    json_decref(r);
    esim_cmd_parsed next;
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.request_type, "InstallProfile");
    char *payload = NULL;
    uint64_t plen = 0;
    plist_get_data_val(plist_dict_get_item(next.command, "Payload"), &payload, &plen);
    plist_t profile = NULL;
    assert_int_equal(esim_profile_parse(payload, (size_t)plen, NULL, &profile, NULL, NULL),
                     ESIM_OK);
    plist_t content = plist_dict_get_item(profile, "PayloadContent");
    plist_t item = plist_array_get_item(content, 0);
    uint8_t v = 1;
    plist_get_bool_val(plist_dict_get_item(item, "allowESIMModification"), &v);
    assert_int_equal(v, 0);
    plist_get_bool_val(plist_dict_get_item(item, "forcePreserveESIMOnErase"), &v);
    assert_int_equal(v, 1);
    plist_free(profile);
    free(payload);
    esim_cmd_parsed_free(&next);
    device_free(&dev);
    harness_stop(&ts);
}

static void test_cancel_and_expiry(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "cancel", &cfg, ts.data_dir);
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev);
    char a[128];
    api_enqueue_refresh(ts.url, udid, "smdp.example.com", a);
    char path[256];
    snprintf(path, sizeof path, "/v1/devices/%s/queue/%s", udid, a);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "DELETE", path, NULL, NULL, NULL), 200);
    /* Canceling twice: it is final now. */
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "DELETE", path, NULL, NULL, NULL), 409);
    snprintf(path, sizeof path, "/v1/devices/%s/queue/11111111-2222-4333-8444-555555555555", udid);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "DELETE", path, NULL, NULL, NULL), 404);
    char st[32];
    api_entry_state(ts.url, a, udid, st, NULL, NULL);
    assert_string_equal(st, "canceled");
    esim_cmd_parsed next;
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_null(next.root);

    /* Expiry: a command past its time is never delivered and becomes expired. */
    char body[512];
    snprintf(
        body, sizeof body,
        "{\"udids\":[\"%s\"],\"expires_in_s\":1,\"command\":{\"request_type\":\"ProfileList\"}}",
        udid);
    json_t *r = NULL;
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, &r), 200);
    char b[128];
    snprintf(b, sizeof b, "%s", json_string_value(json_object_get(r, "command_uuid")));
    json_decref(r);
    for (int i = 0; i < 100; i++) {
        api_entry_state(ts.url, b, udid, st, NULL, NULL);
        if (strcmp(st, "expired") == 0)
            break;
        usleep(100 * 1000);
    }
    assert_string_equal(st, "expired");
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_null(next.root);
    device_free(&dev);
    harness_stop(&ts);
}

static void test_restart_with_non_empty_queue(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "restart", &cfg, ts.data_dir);
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev);
    char a[128], b[128], c[128];
    api_enqueue_refresh(ts.url, udid, "a.example.com", a);
    api_enqueue_refresh(ts.url, udid, "b.example.com", b);
    api_enqueue_refresh(ts.url, udid, "c.example.com", c);
    esim_cmd_parsed next;
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, a);
    esim_cmd_parsed_free(&next);
    assert_int_equal(device_result(&dev, ESIM_STATUS_ACKNOWLEDGED, a, &next), 200);
    assert_string_equal(next.command_uuid, b); /* b is now "sent", unanswered */
    esim_cmd_parsed_free(&next);
    harness_stop(&ts);

    /* Same data directory, new process state. */
    harness_start(&ts, &cfg);
    dev.base_url = ts.url;
    device_reconnect(&dev);
    char st[32];
    api_entry_state(ts.url, a, udid, st, NULL, NULL);
    assert_string_equal(st, "acknowledged");
    /* b was sent but never answered: it comes again; a never does. */
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, b);
    esim_cmd_parsed_free(&next);
    assert_int_equal(device_result(&dev, ESIM_STATUS_ACKNOWLEDGED, b, &next), 200);
    assert_string_equal(next.command_uuid, c);
    esim_cmd_parsed_free(&next);
    assert_int_equal(device_result(&dev, ESIM_STATUS_ACKNOWLEDGED, c, &next), 200);
    assert_null(next.root);
    assert_int_equal(queue_len(ts.url, udid), 0);
    device_free(&dev);
    harness_stop(&ts);
}

/* Every durability mode serves the same protocol and keeps what it said. */
static void test_store_sync_modes(void **state)
{
    (void)state;
    const store_sync modes[] = {STORE_SYNC_FULL, STORE_SYNC_NORMAL, STORE_SYNC_GROUP};
    for (size_t m = 0; m < 3; m++) {
        test_service ts = {0};
        esim_service_config cfg;
        char name[32];
        snprintf(name, sizeof name, "sync-%zu", m);
        harness_config(&env, name, &cfg, ts.data_dir);
        cfg.store_sync = modes[m];
        harness_start(&ts, &cfg);
        char udid[65];
        next_udid(udid);
        test_device dev;
        device_new(&dev, &env, udid, ts.url);
        device_enroll(&dev);
        char a[128], b[128];
        api_enqueue_refresh(ts.url, udid, "a.example.com", a);
        api_enqueue_refresh(ts.url, udid, "b.example.com", b);
        esim_cmd_parsed next;
        assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 200);
        assert_string_equal(next.command_uuid, a);
        esim_cmd_parsed_free(&next);
        assert_int_equal(device_result(&dev, ESIM_STATUS_ACKNOWLEDGED, a, &next), 200);
        assert_string_equal(next.command_uuid, b);
        esim_cmd_parsed_free(&next);
        harness_stop(&ts);
        harness_start(&ts, &cfg);
        char st[32];
        api_entry_state(ts.url, a, udid, st, NULL, NULL);
        assert_string_equal(st, "acknowledged");
        api_entry_state(ts.url, b, udid, st, NULL, NULL);
        assert_string_equal(st, "sent");
        device_free(&dev);
        harness_stop(&ts);
    }
}

/* ---- the Date header: one per answer, in RFC 1123 form ---- */

typedef struct {
    int dates;
    char date[64];
} date_seen;

static size_t date_header_cb(char *line, size_t size, size_t n, void *arg)
{
    date_seen *d = arg;
    size_t len = size * n;
    if (len > 6 && strncasecmp(line, "Date: ", 6) == 0) {
        d->dates++;
        snprintf(d->date, sizeof d->date, "%.*s", (int)(len - 8 > 60 ? 60 : len - 8), line + 6);
    }
    return len;
}

static size_t discard_cb(char *data, size_t size, size_t n, void *arg)
{
    (void)data;
    (void)arg;
    return size * n;
}

/* Each answer names its time once, as evhttp would (the service writes
 * the header itself from a text kept per second), whatever answers it:
 * /healthz, an API error, the device endpoint (an unsigned message,
 * refused). */
static void test_answers_carry_one_date(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "date", &cfg, ts.data_dir);
    cfg.store_sync = STORE_SYNC_GROUP;
    harness_start(&ts, &cfg);
    const char *paths[] = {"/healthz", "/v1/no-such-thing", "/mdm"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        CURL *h = curl_easy_init();
        char full[256];
        snprintf(full, sizeof full, "%s%s", ts.url, paths[i]);
        date_seen d = {0};
        curl_easy_setopt(h, CURLOPT_URL, full);
        if (strcmp(paths[i], "/mdm") == 0) {
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
            curl_easy_setopt(h, CURLOPT_POSTFIELDS,
                             "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict><key>Status"
                             "</key><string>Idle</string><key>UDID</key><string>DATE-TEST-UDID"
                             "</string></dict></plist>");
        }
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, date_header_cb);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, (void *)&d);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_cb);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, 20L);
        assert_int_equal(curl_easy_perform(h), CURLE_OK);
        curl_easy_cleanup(h);
        if (d.dates != 1)
            fail_msg("%s: %d Date headers", paths[i], d.dates);
        /* "Sun, 06 Dec 2026 16:29:21 GMT" */
        if (strlen(d.date) != 29 || d.date[3] != ',' || strcmp(d.date + 26, "GMT") != 0 ||
            curl_getdate(d.date, NULL) <= 0)
            fail_msg("%s: Date '%s' is not RFC 1123", paths[i], d.date);
    }
    harness_stop(&ts);
}

/* No global state: two services in one process know nothing of each other. */
static void test_two_services_in_one_process(void **state)
{
    (void)state;
    test_service a = {0}, b = {0};
    esim_service_config ca, cb;
    harness_config(&env, "two-a", &ca, a.data_dir);
    harness_config(&env, "two-b", &cb, b.data_dir);
    cb.api_token = "another-token-for-b";
    harness_start(&a, &ca);
    harness_start(&b, &cb);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, a.url);
    device_enroll(&dev);
    char path[128];
    snprintf(path, sizeof path, "/v1/devices/%s", udid);
    assert_int_equal(api_call(a.url, TEST_TOKEN, "GET", path, NULL, NULL, NULL), 200);
    assert_int_equal(api_call(b.url, "another-token-for-b", "GET", path, NULL, NULL, NULL), 404);
    assert_int_equal(api_call(b.url, TEST_TOKEN, "GET", path, NULL, NULL, NULL), 401);
    assert_int_equal(api_metric(a.url, "esim_mdm_checkins_total{message_type=\"Authenticate\"}"),
                     1);
    assert_int_equal(api_metric(b.url, "esim_mdm_checkins_total{message_type=\"Authenticate\"}"),
                     0);
    device_free(&dev);
    harness_stop(&a);
    harness_stop(&b);
}

/* ---- webhooks: a receiver on its own loop that fails its first request ---- */

typedef struct {
    struct event_base *base;
    struct evhttp *http;
    int port;
    int requests;
    int fail_first;
    char topics[8][64];
    int ok_signatures;
    pthread_t thread;
} receiver;

static void on_hook(struct evhttp_request *req, void *arg)
{
    receiver *rc = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char *body = calloc(1, len + 1);
    evbuffer_remove(in, body, len);
    int n = rc->requests++;
    if (n < rc->fail_first) {
        evhttp_send_reply(req, 503, "Unavailable", NULL);
        free(body);
        return;
    }
    json_t *j = json_loads(body, 0, NULL);
    if (n < 8)
        snprintf(rc->topics[n], 64, "%s", json_string_value(json_object_get(j, "topic")));
    json_decref(j);
    unsigned char mac[32];
    unsigned mac_len = 0;
    HMAC(EVP_sha256(), "hook-secret", 11, (unsigned char *)body, len, mac, &mac_len);
    esim_buf b64 = {0};
    esim_base64_encode(mac, mac_len, &b64);
    const char *sig = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Hmac-Signature");
    if (sig && strcmp(sig, (const char *)b64.data) == 0)
        rc->ok_signatures++;
    esim_buf_free(&b64);
    free(body);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void *receiver_thread(void *arg)
{
    receiver *rc = arg;
    event_base_dispatch(rc->base);
    return NULL;
}

static void on_receiver_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static void test_webhooks_delivered_signed_and_retried(void **state)
{
    (void)state;
    receiver rc = {.fail_first = 1};
    rc.base = event_base_new();
    rc.http = evhttp_new(rc.base);
    evhttp_set_gencb(rc.http, on_hook, &rc);
    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(rc.http, "127.0.0.1", 0);
    assert_non_null(sock);
    struct sockaddr_in sin;
    socklen_t sl = sizeof sin;
    getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&sin, &sl);
    rc.port = ntohs(sin.sin_port);
    /* The loop runs until a byte arrives on this pipe. */
    int stop_pipe[2];
    assert_int_equal(pipe(stop_pipe), 0);
    struct event *keep = event_new(rc.base, stop_pipe[0], EV_READ, on_receiver_stop, rc.base);
    event_add(keep, NULL);
    pthread_create(&rc.thread, NULL, receiver_thread, &rc);

    char hook_url[128];
    snprintf(hook_url, sizeof hook_url, "http://127.0.0.1:%d/hook", rc.port);
    const char *urls[] = {hook_url};
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "webhooks", &cfg, ts.data_dir);
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    cfg.webhook_secret = "hook-secret";
    cfg.webhook_retry_base_ms = 50;
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev); /* Authenticate (fails once, retried) + TokenUpdate */
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, NULL), 200);
    for (int i = 0;
         i < 100 && api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"delivered\"}") < 3; i++)
        usleep(50 * 1000);
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"delivered\"}"), 3);
    assert_true(api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"retried\"}") >= 1);
    device_free(&dev);
    harness_stop(&ts);

    assert_int_equal(write(stop_pipe[1], "x", 1), 1);
    pthread_join(rc.thread, NULL);
    close(stop_pipe[0]);
    close(stop_pipe[1]);
    assert_int_equal(rc.requests, 4); /* 1 refused + 3 delivered */
    assert_int_equal(rc.ok_signatures, 3);
    int auth = 0, token = 0, connect = 0;
    for (int i = 0; i < 4; i++) {
        auth += strcmp(rc.topics[i], "mdm.Authenticate") == 0;
        token += strcmp(rc.topics[i], "mdm.TokenUpdate") == 0;
        connect += strcmp(rc.topics[i], "mdm.Connect") == 0;
    }
    assert_int_equal(auth, 1);
    assert_int_equal(token, 1);
    assert_int_equal(connect, 1);
    event_free(keep);
    evhttp_free(rc.http);
    event_base_free(rc.base);
}

/* A receiver that is down: deliveries are held up to the cap (the oldest
 * dropped beyond it), retried, then given up and counted, and devices are
 * served all along.
 *
 * The receiver first hangs (a listening socket nobody accepts on: attempts
 * connect and wait), so no delivery can end while the device talks and the
 * cap decides exactly what is dropped; then it goes away (connections reset,
 * later ones refused) and the held ones are given up. With a receiver that
 * refused from the start, whether anything was dropped depended on the race
 * between the device's requests and the failing attempts: on a busy machine
 * each delivery failed before the next message came and none was dropped. */
static void test_webhook_receiver_down_never_blocks_devices(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t sl = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &sl);
    char hook_url[128];
    snprintf(hook_url, sizeof hook_url, "http://127.0.0.1:%d/hook", ntohs(sin.sin_port));
    const char *urls[] = {hook_url};
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "webhooks-down", &cfg, ts.data_dir);
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    cfg.webhook_max_attempts = 2;
    cfg.webhook_retry_base_ms = 20;
    cfg.webhook_timeout_ms = 600000; /* an attempt ends when the receiver goes away, not before */
    cfg.webhook_queue_max = 2;
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev);
    for (int i = 0; i < 5; i++)
        assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, NULL), 200);
    /* 7 messages, at most 2 held: the 5 oldest dropped, 2 still held. */
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"dropped\"}"), 5);
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_pending"), 2);
    /* The receiver goes away: the held ones fail, are retried, given up. The
     * bound only stops a broken build from hanging. */
    close(fd);
    for (int i = 0; i < 6000 && api_metric(ts.url, "esim_mdm_webhooks_pending") != 0; i++)
        usleep(20 * 1000);
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_pending"), 0);
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"failed\"}"), 2);
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"dropped\"}"), 5);
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"delivered\"}"), 0);
    device_free(&dev);
    harness_stop(&ts);
}

/* Issue 10 item 10: a webhook URL's password and query never reach the
 * ledger or the data directory in clear; the store is private (0600); a URL
 * with a CR/LF (header injection) is refused at start. */
static bool file_contains(const char *path, const char *needle)
{
    esim_buf b = {0};
    if (esim_read_file(path, 64u << 20, &b, NULL) != ESIM_OK)
        return false;
    bool found = b.len && memmem(b.data, b.len, needle, strlen(needle)) != NULL;
    esim_buf_free(&b);
    return found;
}

static void test_webhook_credentials_not_stored(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    socklen_t sl = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &sl);
    close(fd);
    char hook_url[160];
    snprintf(hook_url, sizeof hook_url, "http://fleet:hunter2pw@127.0.0.1:%d/hook?key=qs7secret",
             ntohs(sin.sin_port));
    const char *urls[] = {hook_url};
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "webhooks-creds", &cfg, ts.data_dir);
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    cfg.webhook_max_attempts = 1;
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev);
    for (int i = 0; i < 100 && api_metric(ts.url, "esim_mdm_webhooks_pending") != 0; i++)
        usleep(20 * 1000);
    assert_true(api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"failed\"}") >= 1);
    device_free(&dev);
    harness_stop(&ts);
    /* Wherever the store keeps them, the ledger's words never hold the
     * credentials; the redacted URL is there. */
    assert_int_equal(harness_store_query(&cfg,
                                         "SELECT count(*) FROM events WHERE detail LIKE "
                                         "'%hunter2pw%' OR detail LIKE '%qs7secret%'",
                                         NULL, 0),
                     0);
    assert_true(harness_store_query(&cfg,
                                    "SELECT count(*) FROM events WHERE detail LIKE "
                                    "'%http://fleet:***@127.0.0.1%'",
                                    NULL, 0) >= 1);
    if (harness_store_is_sqlite()) {
        /* And neither do the database's files, its log included. */
        const char *const files[] = {"esim-mdm.db", "esim-mdm.db-wal"};
        bool seen_redacted = false;
        for (size_t k = 0; k < 2; k++) {
            char path[400];
            snprintf(path, sizeof path, "%s/%s", ts.data_dir, files[k]);
            assert_false(file_contains(path, "hunter2pw"));
            assert_false(file_contains(path, "qs7secret"));
            seen_redacted = seen_redacted || file_contains(path, "http://fleet:***@127.0.0.1");
        }
        assert_true(seen_redacted);
        char db[400];
        snprintf(db, sizeof db, "%s/esim-mdm.db", ts.data_dir);
        struct stat st;
        assert_int_equal(stat(db, &st), 0);
        assert_int_equal(st.st_mode & 077, 0);
    }
    /* CR/LF in a URL: refused, and the message does not echo the password. */
    snprintf(hook_url, sizeof hook_url, "http://u:hunter2pw@127.0.0.1:1/h\r\nX-Evil: 1");
    esim_service *svc = NULL;
    esim_error err = {{0}};
    struct event_base *base = event_base_new();
    assert_int_equal(esim_service_new(base, &cfg, &svc, &err), ESIM_EINVAL);
    assert_null(svc);
    assert_non_null(strstr(err.msg, "control character"));
    assert_null(strstr(err.msg, "hunter2pw"));
    assert_null(strchr(err.msg, '\n'));
    event_base_free(base);
}

/* A receiver that takes the connection and never answers: the service
 * still serves devices, and stops cleanly with deliveries in flight. */
static void test_webhook_receiver_silent_and_shutdown_in_flight(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(listen(fd, 16), 0); /* connections complete in the backlog, unanswered */
    socklen_t sl = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &sl);
    char hook_url[128];
    snprintf(hook_url, sizeof hook_url, "http://127.0.0.1:%d/hook", ntohs(sin.sin_port));
    const char *urls[] = {hook_url};
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "webhooks-silent", &cfg, ts.data_dir);
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    cfg.webhook_timeout_ms = 60000;
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    device_enroll(&dev);
    for (int i = 0; i < 3; i++)
        assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_pending"), 5);
    device_free(&dev);
    harness_stop(&ts); /* with five deliveries in flight */
    close(fd);
}

/* ---- pushes through the APNs mock ---- */

static void free_mock(void *arg)
{
    apns_mock_free(arg);
}

static void test_push_through_apns_mock(void **state)
{
    (void)state;
    test_service ts = {0};
    ts.base = event_base_new();
    char cert[400], key[400], ca[400];
    snprintf(cert, sizeof cert, "%s/server.pem", env.pki);
    snprintf(key, sizeof key, "%s/server.key", env.pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", env.pki);
    apns_mock_config mc;
    apns_mock_config_init(&mc);
    mc.listen = "127.0.0.1:0";
    mc.tls_cert = cert;
    mc.tls_key = key;
    mc.client_ca = ca;
    apns_mock *mock = NULL;
    esim_error e;
    if (apns_mock_new(ts.base, &mc, &mock, &e) != ESIM_OK)
        fail_msg("mock: %s", e.msg);
    ts.before_base_free = free_mock;
    ts.before_arg = mock;
    char apns_url[64], push_cert[400], push_key[400];
    snprintf(apns_url, sizeof apns_url, "https://127.0.0.1:%d",
             apns_mock_port(mock, APNS_MOCK_PORT_TLS));
    snprintf(push_cert, sizeof push_cert, "%s/push.pem", env.pki);
    snprintf(push_key, sizeof push_key, "%s/push.key", env.pki);
    esim_service_config cfg;
    harness_config(&env, "push", &cfg, ts.data_dir);
    cfg.apns_url = apns_url;
    cfg.apns_cert_path = push_cert;
    cfg.apns_key_path = push_key;
    cfg.apns_ca_path = ca;
    cfg.not_now_backoff_ms = 200;
    harness_start(&ts, &cfg);

    char u1[65], u2[65];
    next_udid(u1);
    next_udid(u2);
    test_device d1, d2;
    device_new(&d1, &env, u1, ts.url);
    device_new(&d2, &env, u2, ts.url);
    /* The push certificate's topic is the only one devices may enroll under. */
    char topic_path[400];
    snprintf(topic_path, sizeof topic_path, "%s/push.topic", env.pki);
    esim_buf topic = {0};
    assert_int_equal(esim_read_file(topic_path, 1024, &topic, NULL), ESIM_OK);
    while (topic.len && (topic.data[topic.len - 1] == '\n' || topic.data[topic.len - 1] == '\r'))
        topic.data[--topic.len] = '\0';
    esim_buf auth = {0};
    esim_authenticate_info wrong = {.udid = u1, .topic = "com.apple.mgmt.External.someone-else"};
    assert_int_equal(esim_msg_build_authenticate(&wrong, &auth, NULL), ESIM_OK);
    assert_int_equal(device_put(&d1, auth.data, auth.len, NULL), 403);
    esim_buf_free(&auth);
    snprintf(d1.topic, sizeof d1.topic, "%s", (const char *)topic.data);
    snprintf(d2.topic, sizeof d2.topic, "%s", (const char *)topic.data);
    esim_buf_free(&topic);
    device_enroll(&d1);
    device_enroll(&d2);
    char body[512];
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\",\"%s\"],\"command\":{\"request_type\":\"RefreshCellularPlans\","
             "\"esim_server_url\":\"smdp.example.com\"}}",
             u1, u2);
    json_t *r = NULL;
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/commands", body, NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r, "devices"), u1), "push")),
                        "sent");
    char uuid[128];
    snprintf(uuid, sizeof uuid, "%s", json_string_value(json_object_get(r, "command_uuid")));
    json_decref(r);
    char st[32] = "";
    for (int i = 0; i < 100; i++) {
        api_entry_state(ts.url, uuid, u2, st, NULL, NULL);
        if (strcmp(st, "pushed") == 0 &&
            api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"accepted\"}") == 2)
            break;
        usleep(50 * 1000);
    }
    assert_string_equal(st, "pushed");
    assert_int_equal(api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"accepted\"}"), 2);
    /* POST /v1/push wakes a device on demand. */
    snprintf(body, sizeof body, "/v1/push/%s", u1);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", body, "", NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r, "devices"), u1), "push")),
                        "sent");
    json_decref(r);
    /* NotNow: the device is pushed again after the back-off, by itself. */
    long accepted = api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"accepted\"}");
    esim_cmd_parsed next;
    assert_int_equal(device_result(&d2, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, uuid);
    esim_cmd_parsed_free(&next);
    assert_int_equal(device_result(&d2, ESIM_STATUS_NOT_NOW, uuid, NULL), 200);
    for (int i = 0; i < 100; i++) {
        api_entry_state(ts.url, uuid, u2, st, NULL, NULL);
        if (strcmp(st, "pushed") == 0)
            break;
        usleep(50 * 1000);
    }
    assert_string_equal(st, "pushed");
    for (int i = 0;
         i < 100 &&
         api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"accepted\"}") == accepted;
         i++)
        usleep(20 * 1000);
    assert_true(api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"accepted\"}") >
                accepted);
    device_free(&d1);
    device_free(&d2);
    harness_stop(&ts);
}

/* ---- a module on the service's hooks (what campaign/ uses) ------------------------------- */

typedef struct {
    int closed;
    int removed_calls; /* hooks registered with the removed module that still ran */
} hook_module;

static void thing_get(esim_api_request *r, void *arg)
{
    (void)arg;
    const char *q = esim_api_query(r, "q");
    esim_api_reply_json(r, 200,
                        json_pack("{s:s, s:s?, s:b}", "id", esim_api_param(r, 0), "q", q, "second",
                                  esim_api_param(r, 1) != NULL));
}

static void thing_post(esim_api_request *r, void *arg)
{
    (void)arg;
    json_t *body = esim_api_body_json(r);
    if (!body)
        return;
    json_t *n = json_object_get(body, "n");
    if (!json_is_integer(n))
        esim_api_error(r, 400, "n", "n: must be a whole number");
    else
        esim_api_reply_json(r, 201, json_pack("{s:I}", "twice", 2 * json_integer_value(n)));
    json_decref(body);
}

static void thing_metrics(esim_service *svc, esim_buf *out, void *arg)
{
    (void)svc;
    (void)arg;
    esim_buf_append_str(out, "esim_mdm_test_module_things 42\n");
}

static void thing_close(esim_service *svc, void *arg)
{
    (void)svc;
    ((hook_module *)arg)->closed++;
}

static void removed_route(esim_api_request *r, void *arg)
{
    ((hook_module *)arg)->removed_calls++;
    esim_api_reply_json(r, 200, json_object());
}

static void removed_metrics(esim_service *svc, esim_buf *out, void *arg)
{
    (void)svc;
    (void)out;
    ((hook_module *)arg)->removed_calls++;
}

static void attach_things(esim_service *svc, void *arg)
{
    hook_module *m = arg;
    assert_int_equal(esim_service_add_route(svc, "GET", "/v1/things/:", thing_get, m), ESIM_OK);
    assert_int_equal(esim_service_add_route(svc, "POST", "/v1/things/:", thing_post, m), ESIM_OK);
    assert_int_equal(esim_service_add_metrics(svc, thing_metrics, m), ESIM_OK);
    assert_int_equal(esim_service_add_close(svc, thing_close, m), ESIM_OK);
    /* Bad registrations change nothing. */
    assert_int_equal(esim_service_add_route(svc, "GET", "/v1/things/:", thing_get, m), ESIM_EEXIST);
    assert_int_equal(esim_service_add_route(svc, "GET", "/v1/devices", thing_get, m), ESIM_EEXIST);
    assert_int_equal(esim_service_add_route(svc, "PATCH", "/v1/x", thing_get, m), ESIM_EINVAL);
    assert_int_equal(esim_service_add_route(svc, "GET", "v1/x", thing_get, m), ESIM_EINVAL);
    assert_int_equal(esim_service_add_route(svc, "GET", "/v1/:/:/:/:/:", thing_get, m),
                     ESIM_EINVAL);
    assert_int_equal(esim_service_add_route(svc, "GET", "/v1/x", NULL, m), ESIM_EINVAL);
    assert_int_equal(esim_service_add_metrics(svc, NULL, m), ESIM_EINVAL);
    /* A module that gives up half-way leaves nothing behind. */
    static hook_module gone;
    assert_int_equal(esim_service_add_route(svc, "GET", "/v1/gone", removed_route, &gone), ESIM_OK);
    assert_int_equal(esim_service_add_metrics(svc, removed_metrics, &gone), ESIM_OK);
    assert_int_equal(esim_service_add_close(svc, thing_close, &gone), ESIM_OK);
    esim_service_remove_hooks(svc, &gone);
    assert_non_null(esim_service_base(svc));
}

static void test_module_hooks_routes_metrics_close(void **state)
{
    (void)state;
    hook_module m = {0};
    test_service ts = {.attach = attach_things, .attach_arg = &m};
    esim_service_config cfg;
    harness_config(&env, "module", &cfg, ts.data_dir);
    harness_start(&ts, &cfg);
    json_t *r = NULL;
    assert_int_equal(
        api_call(ts.url, TEST_TOKEN, "GET", "/v1/things/a%20b?q=x%26y", NULL, NULL, &r), 200);
    assert_string_equal(json_string_value(json_object_get(r, "id")), "a b");
    assert_string_equal(json_string_value(json_object_get(r, "q")), "x&y");
    assert_false(json_is_true(json_object_get(r, "second")));
    json_decref(r);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/things/a", "{\"n\":21}", NULL, &r),
                     201);
    assert_int_equal(json_integer_value(json_object_get(r, "twice")), 42);
    json_decref(r);
    r = NULL;
    assert_int_equal(
        api_call(ts.url, TEST_TOKEN, "POST", "/v1/things/a", "{\"n\":\"x\"}", NULL, &r), 400);
    assert_string_equal(json_string_value(json_object_get(json_object_get(r, "error"), "field")),
                        "n");
    json_decref(r);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/things/a", "[1]", NULL, NULL), 400);
    /* Module routes need the token, answer 405 to other methods and 404
     * past their patterns, like the service's own. */
    assert_int_equal(api_call(ts.url, NULL, "GET", "/v1/things/a", NULL, NULL, NULL), 401);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "DELETE", "/v1/things/a", NULL, NULL, NULL), 405);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/things/a/b", NULL, NULL, NULL), 404);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/gone", NULL, NULL, NULL), 404);
    /* Without campaigns attached, their routes do not exist. */
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", "/v1/campaigns", NULL, NULL, NULL), 404);
    assert_int_equal(api_metric(ts.url, "esim_mdm_test_module_things"), 42);
    assert_int_equal(m.closed, 0);
    harness_stop(&ts);
    assert_int_equal(m.closed, 1);
    assert_int_equal(m.removed_calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_requires_token),
        cmocka_unit_test(test_api_validation_names_field_and_enqueues_nothing),
        cmocka_unit_test(test_text_that_is_not_utf8),
        cmocka_unit_test(test_restrictions_become_install_profile),
        cmocka_unit_test(test_cancel_and_expiry),
        cmocka_unit_test(test_restart_with_non_empty_queue),
        cmocka_unit_test(test_store_sync_modes),
        cmocka_unit_test(test_answers_carry_one_date),
        cmocka_unit_test(test_two_services_in_one_process),
        cmocka_unit_test(test_webhooks_delivered_signed_and_retried),
        cmocka_unit_test(test_webhook_receiver_down_never_blocks_devices),
        cmocka_unit_test(test_webhook_credentials_not_stored),
        cmocka_unit_test(test_webhook_receiver_silent_and_shutdown_in_flight),
        cmocka_unit_test(test_push_through_apns_mock),
        cmocka_unit_test(test_module_hooks_routes_metrics_close),
        cmocka_unit_test(test_api_errors_are_json),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
