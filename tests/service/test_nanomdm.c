/*
 * test_nanomdm.c — esim-mdm as a drop-in for NanoMDM (docs/api.md, "NanoMDM
 * compatibility"): one case per row of the table. Enqueue and push answer
 * in NanoMDM's shape and codes (push_result with the apns-id, push_error,
 * command_error; 200, 207, 500; any method; user-channel ids refused),
 * /version, /migration (a fleet moved without re-enrolling), GET and PUT
 * /v1/pushcert, identity from a TLS proxy's Client-Cert header, the
 * check-ins beyond enrolment (UserAuthenticate 410, DeclarativeManagement,
 * Set/GetBootstrapToken, GetToken), and webhook bodies validated against
 * the JSON schema of NanoMDM's event (tests/data/nanomdm-webhook.schema.json,
 * by tests/service/validate_webhooks.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <openssl/pem.h>
#include <sys/socket.h>

#include "apns/apns_mock.h"
#include "service/svc_harness.h"

HARNESS_ENV_GROUP(env)
static int counter;

static void next_udid(char udid[65])
{
    counter++;
    snprintf(udid, 65, "NANO-%04d-0000-4000-8000-%012d", counter, counter * 7);
}

static const char *str_at(json_t *root, const char *a, const char *b, const char *c)
{
    json_t *v = json_object_get(root, a);
    if (b)
        v = json_object_get(v, b);
    if (c)
        v = json_object_get(v, c);
    return json_string_value(v);
}

static void read_topic(char topic[128])
{
    char path[400];
    snprintf(path, sizeof path, "%s/push.topic", env.pki);
    esim_buf t = {0};
    assert_int_equal(esim_read_file(path, 1024, &t, NULL), ESIM_OK);
    while (t.len && (t.data[t.len - 1] == '\n' || t.data[t.len - 1] == '\r'))
        t.data[--t.len] = '\0';
    snprintf(topic, 128, "%s", (const char *)t.data);
    esim_buf_free(&t);
}

/* ---- a service with the APNs mock ---------------------------------------------- */

static void free_mock(void *arg)
{
    apns_mock_free(arg);
}

static void start_with_apns(test_service *ts, const char *name, bool apns, bool migration)
{
    memset(ts, 0, sizeof *ts);
    ts->base = event_base_new();
    static char apns_url[64], cert[400], key[400], ca[400], push_cert[400], push_key[400];
    snprintf(cert, sizeof cert, "%s/server.pem", env.pki);
    snprintf(key, sizeof key, "%s/server.key", env.pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", env.pki);
    snprintf(push_cert, sizeof push_cert, "%s/push.pem", env.pki);
    snprintf(push_key, sizeof push_key, "%s/push.key", env.pki);
    esim_service_config cfg;
    harness_config(&env, name, &cfg, ts->data_dir);
    cfg.migration = migration;
    if (apns) {
        apns_mock_config mc;
        apns_mock_config_init(&mc);
        mc.listen = "127.0.0.1:0";
        mc.tls_cert = cert;
        mc.tls_key = key;
        mc.client_ca = ca;
        apns_mock *mock = NULL;
        esim_error e;
        if (apns_mock_new(ts->base, &mc, &mock, &e) != ESIM_OK)
            fail_msg("mock: %s", e.msg);
        ts->before_base_free = free_mock;
        ts->before_arg = mock;
        snprintf(apns_url, sizeof apns_url, "https://127.0.0.1:%d",
                 apns_mock_port(mock, APNS_MOCK_PORT_TLS));
        cfg.apns_url = apns_url;
        cfg.apns_cert_path = push_cert;
        cfg.apns_key_path = push_key;
        cfg.apns_ca_path = ca;
    }
    harness_start(ts, &cfg);
}

/* A plain request with HTTP Basic (nanomdm:token), as NanoMDM clients
 * authenticate; returns the status, *out the JSON answer. */
static long basic_call(const char *url, const char *method, const char *path, const char *body,
                       json_t **out)
{
    CURL *c = curl_easy_init();
    char full[1024];
    snprintf(full, sizeof full, "%s%s", url, path);
    esim_buf reply = {0};
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_USERPWD, "nanomdm:" TEST_TOKEN);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    FILE *sink = open_memstream((char **)&reply.data, &reply.len);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    fclose(sink);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (out) {
        *out = json_loadb((const char *)reply.data, reply.len, 0, NULL);
        if (!*out)
            fail_msg("%s %s: not JSON: %.*s", method, path, (int)reply.len, (char *)reply.data);
    }
    free(reply.data);
    return status;
}

static char *command_plist(const char *uuid)
{
    static char buf[600];
    snprintf(buf, sizeof buf,
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?><plist version=\"1.0\"><dict>"
             "<key>CommandUUID</key><string>%s</string><key>Command</key><dict>"
             "<key>RequestType</key><string>ProfileList</string></dict></dict></plist>",
             uuid);
    return buf;
}

/* Row: enqueue and push, in NanoMDM's shape and codes. */
static void test_enqueue_and_push_answers(void **state)
{
    (void)state;
    test_service ts;
    start_with_apns(&ts, "answers", true, false);
    char topic[128], u1[65], u2[65], path[400];
    read_topic(topic);
    next_udid(u1);
    next_udid(u2);
    test_device d1, d2;
    device_new(&d1, &env, u1, ts.url);
    device_new(&d2, &env, u2, ts.url);
    snprintf(d1.topic, sizeof d1.topic, "%s", topic);
    snprintf(d2.topic, sizeof d2.topic, "%s", topic);
    device_enroll(&d1);
    /* d2 authenticates only: no push token. */
    esim_buf b = {0};
    esim_authenticate_info info = {.udid = u2, .topic = topic};
    assert_int_equal(esim_msg_build_authenticate(&info, &b, NULL), ESIM_OK);
    assert_int_equal(device_put(&d2, b.data, b.len, NULL), 200);
    esim_buf_free(&b);

    /* 200: one device, pushed; push_result is the apns-id (a UUID). Any
     * method works (curl -T sends PUT, others POST). */
    json_t *r = NULL;
    snprintf(path, sizeof path, "/v1/enqueue/%s", u1);
    assert_int_equal(basic_call(ts.url, "POST", path, command_plist("nano-cmd-1"), &r), 200);
    const char *id = str_at(r, "status", u1, "push_result");
    assert_non_null(id);
    assert_true(esim_uuid_valid(id));
    assert_string_equal(str_at(r, "command_uuid", NULL, NULL), "nano-cmd-1");
    assert_string_equal(str_at(r, "request_type", NULL, NULL), "ProfileList");
    assert_null(json_object_get(r, "command_error"));
    json_decref(r);
    /* 207: one of two failed to push (no token): push_error names why. */
    snprintf(path, sizeof path, "/v1/enqueue/%s,%s", u1, u2);
    assert_int_equal(basic_call(ts.url, "PATCH", path, command_plist("nano-cmd-2"), &r), 207);
    assert_non_null(str_at(r, "status", u1, "push_result"));
    assert_non_null(strstr(str_at(r, "status", u2, "push_error"), "TokenUpdate"));
    json_decref(r);
    /* 500: every push failed (the command is queued all the same). */
    snprintf(path, sizeof path, "/v1/enqueue/%s", u2);
    assert_int_equal(basic_call(ts.url, "PUT", path, command_plist("nano-cmd-3"), &r), 500);
    assert_non_null(str_at(r, "status", u2, "push_error"));
    json_decref(r);
    /* ?nopush=1: no_push, nothing pushed, 200. */
    snprintf(path, sizeof path, "/v1/enqueue/%s?nopush=1", u2);
    assert_int_equal(basic_call(ts.url, "PUT", path, command_plist("nano-cmd-4"), &r), 200);
    assert_true(json_is_true(json_object_get(r, "no_push")));
    assert_null(str_at(r, "status", u2, "push_error"));
    json_decref(r);
    /* Refused as a whole, nothing stored: command_error at the top. */
    snprintf(path, sizeof path, "/v1/enqueue/%s", u1);
    assert_int_equal(basic_call(ts.url, "PUT", path, command_plist("nano-cmd-1"), &r), 409);
    assert_non_null(str_at(r, "command_error", NULL, NULL));
    json_decref(r);
    assert_int_equal(basic_call(ts.url, "PUT", path, "not a plist", &r), 400);
    assert_non_null(str_at(r, "command_error", NULL, NULL));
    json_decref(r);
    /* A user-channel id (UDID:UserID): refused, named in status. */
    snprintf(path, sizeof path, "/v1/enqueue/%s:501", u1);
    assert_int_equal(basic_call(ts.url, "PUT", path, command_plist("nano-cmd-5"), &r), 400);
    char key[100];
    snprintf(key, sizeof key, "%s:501", u1);
    assert_non_null(strstr(str_at(r, "status", key, "command_error"), "user-channel"));
    json_decref(r);

    /* Push: GET (as NanoMDM's guide shows), DELETE, anything. */
    snprintf(path, sizeof path, "/v1/push/%s", u1);
    assert_int_equal(basic_call(ts.url, "GET", path, NULL, &r), 200);
    assert_true(esim_uuid_valid(str_at(r, "status", u1, "push_result")));
    assert_string_equal(str_at(r, "devices", u1, "push"), "sent");
    json_decref(r);
    char unknown[65];
    next_udid(unknown);
    snprintf(path, sizeof path, "/v1/push/%s,%s,%s:501", u1, unknown, u1);
    assert_int_equal(basic_call(ts.url, "DELETE", path, NULL, &r), 207);
    assert_non_null(str_at(r, "status", u1, "push_result"));
    assert_non_null(str_at(r, "status", unknown, "push_error"));
    assert_non_null(strstr(str_at(r, "status", key, "push_error"), "user-channel"));
    json_decref(r);
    snprintf(path, sizeof path, "/v1/push/%s", unknown);
    assert_int_equal(basic_call(ts.url, "POST", path, NULL, &r), 500);
    json_decref(r);
    device_free(&d1);
    device_free(&d2);
    harness_stop(&ts);
}

/* Rows: /version; /migration. */
static void test_version_and_migration(void **state)
{
    (void)state;
    test_service off;
    start_with_apns(&off, "no-migration", false, false);
    json_t *r = NULL;
    assert_int_equal(api_call(off.url, NULL, "GET", "/version", NULL, NULL, &r), 200);
    assert_non_null(str_at(r, "version", NULL, NULL));
    json_decref(r);
    assert_int_equal(basic_call(off.url, "POST", "/migration", "x", &r), 404);
    json_decref(r);
    harness_stop(&off);

    test_service ts;
    start_with_apns(&ts, "migration", false, true);
    char udid[65];
    next_udid(udid);
    char body[1200];
    snprintf(body, sizeof body,
             "<plist version=\"1.0\"><dict><key>MessageType</key><string>Authenticate</string>"
             "<key>UDID</key><string>%s</string><key>Topic</key><string>%s</string>"
             "<key>SerialNumber</key><string>C02MIGRATED</string></dict></plist>",
             udid, env.topic);
    assert_int_equal(api_call(ts.url, NULL, "POST", "/migration", body, NULL, NULL), 401);
    assert_int_equal(basic_call(ts.url, "POST", "/migration", body, &r), 200);
    json_decref(r);
    snprintf(body, sizeof body,
             "<plist version=\"1.0\"><dict><key>MessageType</key><string>TokenUpdate</string>"
             "<key>UDID</key><string>%s</string><key>Topic</key><string>%s</string>"
             "<key>Token</key><data>AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=</data>"
             "<key>PushMagic</key><string>migrated-magic</string></dict></plist>",
             udid, env.topic);
    assert_int_equal(basic_call(ts.url, "PUT", "/migration", body, &r), 200);
    json_decref(r);
    char path[200];
    snprintf(path, sizeof path, "/v1/devices/%s", udid);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    assert_true(json_is_true(json_object_get(r, "enrolled")));
    assert_string_equal(str_at(r, "push", "state", NULL), "valid");
    assert_string_equal(str_at(r, "serial_number", NULL, NULL), "C02MIGRATED");
    assert_true(json_is_null(json_object_get(r, "identity_sha256")));
    json_decref(r);
    /* The device checks in with its identity: bound from then on. */
    test_device dev, other;
    device_new(&dev, &env, udid, ts.url);
    device_new(&other, &env, udid, ts.url);
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, NULL), 200);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &r), 200);
    assert_non_null(str_at(r, "identity_sha256", NULL, NULL));
    json_decref(r);
    assert_int_equal(device_result(&other, ESIM_STATUS_IDLE, NULL, NULL), 403);
    /* Not check-ins a migration takes; a TokenUpdate of an unknown device. */
    assert_int_equal(basic_call(ts.url, "POST", "/migration", "<plist><dict/></plist>", &r), 400);
    json_decref(r);
    next_udid(udid);
    snprintf(body, sizeof body,
             "<plist version=\"1.0\"><dict><key>MessageType</key><string>TokenUpdate</string>"
             "<key>UDID</key><string>%s</string><key>Topic</key><string>%s</string>"
             "<key>Token</key><data>AAEC</data>"
             "<key>PushMagic</key><string>m</string></dict></plist>",
             udid, env.topic);
    assert_int_equal(basic_call(ts.url, "POST", "/migration", body, &r), 404);
    json_decref(r);
    device_free(&dev);
    device_free(&other);
    harness_stop(&ts);
}

/* Row: GET and PUT /v1/pushcert. */
static void test_pushcert(void **state)
{
    (void)state;
    test_service ts;
    start_with_apns(&ts, "pushcert", true, false);
    char topic[128];
    read_topic(topic);
    json_t *r = NULL;
    assert_int_equal(basic_call(ts.url, "GET", "/v1/pushcert", NULL, &r), 200);
    assert_string_equal(str_at(r, "topic", NULL, NULL), topic);
    const char *na = str_at(r, "not_after", NULL, NULL);
    assert_int_equal(strlen(na), 20);
    assert_int_equal(na[19], 'Z');
    json_decref(r);
    char path[300];
    snprintf(path, sizeof path, "/v1/pushcert?topic=%s", topic);
    assert_int_equal(basic_call(ts.url, "GET", path, NULL, &r), 200);
    json_decref(r);
    assert_int_equal(basic_call(ts.url, "GET", "/v1/pushcert?topic=com.apple.mgmt.other", NULL, &r),
                     404);
    json_decref(r);
    /* PUT: the certificate and its key, concatenated, as `cat | curl -T -`. */
    char p1[400], p2[400];
    snprintf(p1, sizeof p1, "%s/push.pem", env.pki);
    snprintf(p2, sizeof p2, "%s/push.key", env.pki);
    esim_buf pem = {0}, keypem = {0};
    assert_int_equal(esim_read_file(p1, 65536, &pem, NULL), ESIM_OK);
    assert_int_equal(esim_read_file(p2, 65536, &keypem, NULL), ESIM_OK);
    assert_int_equal(basic_call(ts.url, "PUT", "/v1/pushcert", "garbage", &r), 400);
    json_decref(r);
    assert_int_equal(basic_call(ts.url, "PUT", "/v1/pushcert", (const char *)pem.data, &r), 400);
    assert_non_null(strstr(str_at(r, "error", "message", NULL), "key"));
    json_decref(r);
    /* A key of another certificate. */
    char other_key[400];
    snprintf(other_key, sizeof other_key, "%s/server.key", env.pki);
    esim_buf wrong = {0};
    assert_int_equal(esim_read_file(other_key, 65536, &wrong, NULL), ESIM_OK);
    esim_buf both = {0};
    esim_buf_append(&both, pem.data, pem.len);
    esim_buf_append(&both, wrong.data, wrong.len);
    assert_int_equal(basic_call(ts.url, "PUT", "/v1/pushcert", (const char *)both.data, &r), 400);
    json_decref(r);
    esim_buf_free(&both);
    esim_buf_append(&both, pem.data, pem.len);
    esim_buf_append(&both, keypem.data, keypem.len);
    assert_int_equal(basic_call(ts.url, "PUT", "/v1/pushcert", (const char *)both.data, &r), 200);
    assert_string_equal(str_at(r, "topic", NULL, NULL), topic);
    json_decref(r);
    char stored[400];
    snprintf(stored, sizeof stored, "%s/apns-push.key", ts.data_dir);
    struct stat sb;
    assert_int_equal(stat(stored, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    /* Pushes go out with the new client, and APNs takes them. */
    char udid[65];
    next_udid(udid);
    test_device dev;
    device_new(&dev, &env, udid, ts.url);
    snprintf(dev.topic, sizeof dev.topic, "%s", topic);
    device_enroll(&dev);
    snprintf(path, sizeof path, "/v1/push/%s", udid);
    assert_int_equal(basic_call(ts.url, "POST", path, NULL, &r), 200);
    json_decref(r);
    for (int i = 0;
         i < 200 && api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"accepted\"}") < 1;
         i++)
        usleep(25 * 1000);
    assert_int_equal(api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"accepted\"}"), 1);
    device_free(&dev);
    harness_stop(&ts);

    /* Without --apns: nothing to replace, nothing to show. */
    start_with_apns(&ts, "pushcert-none", false, false);
    assert_int_equal(basic_call(ts.url, "GET", "/v1/pushcert", NULL, &r), 404);
    json_decref(r);
    assert_int_equal(basic_call(ts.url, "PUT", "/v1/pushcert", (const char *)both.data, &r), 409);
    json_decref(r);
    harness_stop(&ts);
    esim_buf_free(&both);
    esim_buf_free(&pem);
    esim_buf_free(&keypem);
    esim_buf_free(&wrong);
}

static long checkin(test_device *d, const char *type, const char *extra, esim_buf *reply)
{
    char body[2000];
    snprintf(body, sizeof body,
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?><plist version=\"1.0\"><dict>"
             "<key>MessageType</key><string>%s</string><key>UDID</key><string>%s</string>%s"
             "</dict></plist>",
             type, d->udid, extra ? extra : "");
    if (reply)
        esim_buf_free(reply);
    return device_put(d, body, strlen(body), reply);
}

/* Rows: the check-ins beyond enrolment, and every webhook body valid
 * against NanoMDM's event schema. */
static void test_checkins_and_webhooks(void **state)
{
    (void)state;
    char bodies[400];
    snprintf(bodies, sizeof bodies, "%s/webhooks.jsonl", env.dir);
    hook_receiver rc;
    int port = hook_receiver_start(&rc, bodies);
    char hook[100];
    snprintf(hook, sizeof hook, "http://127.0.0.1:%d/hook", port);
    const char *urls[] = {hook};
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "checkins", &cfg, ts.data_dir);
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device d;
    device_new(&d, &env, udid, ts.url);
    device_enroll(&d); /* Authenticate, TokenUpdate (tally 1) */
    esim_buf reply = {0};
    char extra[200];
#define DM_ENDPOINT(e) "<key>Endpoint</key><string>" e "</string>"

    assert_int_equal(checkin(&d, "UserAuthenticate", "<key>UserID</key><string>u1</string>", NULL),
                     410);
    assert_int_equal(checkin(&d, "DeclarativeManagement", DM_ENDPOINT("tokens"), &reply), 200);
    json_t *j = json_loadb((const char *)reply.data, reply.len, 0, NULL);
    assert_non_null(str_at(j, "SyncTokens", "DeclarationsToken", NULL));
    json_decref(j);
    assert_int_equal(checkin(&d, "DeclarativeManagement", DM_ENDPOINT("declaration-items"), &reply),
                     200);
    j = json_loadb((const char *)reply.data, reply.len, 0, NULL);
    assert_true(json_is_array(json_object_get(json_object_get(j, "Declarations"), "Activations")));
    json_decref(j);
    snprintf(extra, sizeof extra, "%s", DM_ENDPOINT("status") "<key>Data</key><data>e30=</data>");
    assert_int_equal(checkin(&d, "DeclarativeManagement", extra, &reply), 200);
    assert_int_equal(
        checkin(&d, "DeclarativeManagement", DM_ENDPOINT("declaration/configuration/x"), &reply),
        404);
    assert_int_equal(checkin(&d, "DeclarativeManagement", NULL, &reply), 400);
    /* Bootstrap token: none yet (empty answer), stored, given back. */
    assert_int_equal(checkin(&d, "GetBootstrapToken", NULL, &reply), 200);
    assert_int_equal(reply.len, 0);
    assert_int_equal(checkin(&d, "SetBootstrapToken",
                             "<key>BootstrapToken</key><data>Ym9vdHN0cmFw</data>", NULL),
                     200);
    assert_int_equal(checkin(&d, "GetBootstrapToken", NULL, &reply), 200);
    plist_t p = NULL;
    plist_from_memory((const char *)reply.data, (uint32_t)reply.len, &p);
    assert_non_null(p);
    char *tok = NULL;
    uint64_t tok_len = 0;
    plist_get_data_val(plist_dict_get_item(p, "BootstrapToken"), &tok, &tok_len);
    assert_int_equal(tok_len, 9);
    assert_memory_equal(tok, "bootstrap", 9);
    free(tok);
    plist_free(p);
    assert_int_equal(checkin(&d, "GetToken",
                             "<key>TokenServiceType</key><string>com.apple.maid</string>", &reply),
                     404);
    assert_int_equal(checkin(&d, "Enroll", NULL, &reply), 400);
    assert_non_null(strstr((const char *)reply.data, "GetToken"));
    /* The user channel does not touch the device's token. */
    assert_int_equal(checkin(&d, "TokenUpdate",
                             "<key>Topic</key><string>com.apple.mgmt.External.test</string>"
                             "<key>UserID</key><string>u1</string><key>Token</key><data>AAEC</data>"
                             "<key>PushMagic</key><string>user-magic</string>",
                             NULL),
                     410);
    /* A second TokenUpdate (tally 2), with a short placeholder Token. */
    assert_int_equal(checkin(&d, "TokenUpdate",
                             "<key>Topic</key><string>com.apple.mgmt.External.test</string>"
                             "<key>Token</key><data>AAEC</data>"
                             "<key>PushMagic</key><string>magic-2</string>",
                             NULL),
                     200);
    /* url_params: the device's query string (the base URL carries one). */
    char base[200];
    snprintf(base, sizeof base, "%s/mdm?enrollment=abc&x=", ts.url);
    d.base_url = base;
    assert_int_equal(device_result(&d, ESIM_STATUS_IDLE, NULL, NULL), 200);
    d.base_url = ts.url;
    char uuid[128];
    api_enqueue_refresh(ts.url, udid, "smdp.example.com", uuid);
    esim_cmd_parsed next = {0};
    assert_int_equal(device_result(&d, ESIM_STATUS_IDLE, NULL, &next), 200);
    esim_cmd_parsed_free(&next);
    assert_int_equal(device_result(&d, ESIM_STATUS_ACKNOWLEDGED, uuid, NULL), 200);
    /* Every check-in and result above that was taken: 2 enrolment + 1
     * UserAuthenticate + 4 DeclarativeManagement + 3 bootstrap + 1
     * GetToken + 1 TokenUpdate + 3 results. */
    int want = 15;
    for (int i = 0;
         i < 200 && api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"delivered\"}") < want;
         i++)
        usleep(25 * 1000);
    assert_int_equal(api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"delivered\"}"), want);
    esim_buf_free(&reply);
    device_free(&d);
    harness_stop(&ts);
    hook_receiver_stop(&rc);
    assert_int_equal(rc.requests, want);

    /* The bodies: tallies 1 then 2; Idle without command_uuid; url_params. */
    esim_buf all = {0};
    assert_int_equal(esim_read_file(bodies, 1 << 20, &all, NULL), ESIM_OK);
    int tallies[4], n_tally = 0, idle = 0, with_params = 0;
    for (char *save = NULL, *line = strtok_r((char *)all.data, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        json_t *ev = json_loads(line, 0, NULL);
        assert_non_null(ev);
        json_t *ce = json_object_get(ev, "checkin_event");
        json_t *ae = json_object_get(ev, "acknowledge_event");
        json_t *e = ce ? ce : ae;
        assert_string_equal(str_at(e, "ids", "id", NULL), udid);
        assert_string_equal(str_at(e, "ids", "type", NULL), "Device");
        assert_true(json_is_object(json_object_get(e, "url_params")));
        if (json_object_get(e, "token_update_tally") && n_tally < 4)
            tallies[n_tally++] = (int)json_integer_value(json_object_get(e, "token_update_tally"));
        if (ae && strcmp(str_at(ae, "status", NULL, NULL), "Idle") == 0) {
            idle++;
            assert_null(json_object_get(ae, "command_uuid"));
        }
        if (str_at(e, "url_params", "enrollment", NULL)) {
            with_params++;
            assert_string_equal(str_at(e, "url_params", "enrollment", NULL), "abc");
        }
        json_decref(ev);
    }
    esim_buf_free(&all);
    assert_int_equal(n_tally, 2);
    assert_int_equal(tallies[0], 1);
    assert_int_equal(tallies[1], 2);
    assert_int_equal(idle, 2);
    assert_int_equal(with_params, 1);

    /* And all of them against the schema. */
    const char *src = getenv("ESIM_SOURCE_DIR");
    assert_non_null(src);
    char cmd[1500];
    snprintf(cmd, sizeof cmd,
             "python3 '%s/tests/service/validate_webhooks.py' "
             "'%s/tests/data/nanomdm-webhook.schema.json' '%s'",
             src, src, bodies);
    assert_int_equal(system(cmd), 0);
}

/* Row: -cert-header: the identity a TLS proxy passes as RFC 9440's
 * Client-Cert (or a URL-escaped PEM). */
static long header_put(const char *url, const char *header, const char *body)
{
    CURL *c = curl_easy_init();
    char full[300];
    snprintf(full, sizeof full, "%s/mdm", url);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type:");
    if (header)
        h = curl_slist_append(h, header);
    curl_easy_setopt(c, CURLOPT_URL, full);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    FILE *devnull = fopen("/dev/null", "w");
    curl_easy_setopt(c, CURLOPT_WRITEDATA, devnull);
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    fclose(devnull);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

static void test_cert_header(void **state)
{
    (void)state;
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "cert-header", &cfg, ts.data_dir);
    cfg.device_auth = ESIM_DEVICE_AUTH_HEADER; /* header "Client-Cert" by default */
    harness_start(&ts, &cfg);
    char udid[65];
    next_udid(udid);
    test_device d;
    device_new(&d, &env, udid, ts.url);
    /* RFC 9440: ":" base64(DER) ":" */
    unsigned char *der = NULL;
    int der_len = i2d_X509(d.identity.x509, &der);
    assert_true(der_len > 0);
    esim_buf b64 = {0};
    assert_int_equal(esim_base64_encode(der, (size_t)der_len, &b64), ESIM_OK);
    OPENSSL_free(der);
    char *rfc = malloc(b64.len + 32);
    sprintf(rfc, "Client-Cert: :%s:", (const char *)b64.data);
    esim_buf_free(&b64);
    char body[600];
    snprintf(body, sizeof body,
             "<plist version=\"1.0\"><dict><key>MessageType</key><string>Authenticate</string>"
             "<key>UDID</key><string>%s</string><key>Topic</key><string>%s</string>"
             "</dict></plist>",
             udid, env.topic);
    assert_int_equal(header_put(ts.url, NULL, body), 401);
    assert_int_equal(header_put(ts.url, "Client-Cert: :bm90IGEgY2VydA==:", body), 401);
    assert_int_equal(header_put(ts.url, rfc, body), 200);
    /* nginx's $ssl_client_escaped_cert: the PEM, URL-escaped. */
    BIO *mem = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(mem, d.identity.x509);
    char *pem = NULL;
    long pem_len = BIO_get_mem_data(mem, &pem);
    char *pem_copy = strndup(pem, (size_t)pem_len);
    BIO_free(mem);
    char *escaped = curl_easy_escape(NULL, pem_copy, 0);
    free(pem_copy);
    char *line = malloc(strlen(escaped) + 32);
    sprintf(line, "Client-Cert: %s", escaped);
    curl_free(escaped);
    snprintf(body, sizeof body,
             "<plist version=\"1.0\"><dict><key>Status</key><string>Idle</string>"
             "<key>UDID</key><string>%s</string></dict></plist>",
             udid);
    assert_int_equal(header_put(ts.url, line, body), 200);
    /* Another device's identity: bound to none, but not this UDID's. */
    test_device other;
    char other_udid[65];
    next_udid(other_udid);
    device_new(&other, &env, other_udid, ts.url);
    der = NULL;
    der_len = i2d_X509(other.identity.x509, &der);
    assert_int_equal(esim_base64_encode(der, (size_t)der_len, &b64), ESIM_OK);
    OPENSSL_free(der);
    char *rfc2 = malloc(b64.len + 32);
    sprintf(rfc2, "Client-Cert: :%s:", (const char *)b64.data);
    esim_buf_free(&b64);
    assert_int_equal(header_put(ts.url, rfc2, body), 403);
    /* A certificate that does not chain to the device CA. */
    esim_cert server = {0};
    assert_int_equal(esim_pki_load(env.pki, "server", &server, NULL), ESIM_OK);
    der = NULL;
    der_len = i2d_X509(server.x509, &der);
    assert_int_equal(esim_base64_encode(der, (size_t)der_len, &b64), ESIM_OK);
    OPENSSL_free(der);
    char *rfc3 = malloc(b64.len + 32);
    sprintf(rfc3, "Client-Cert: :%s:", (const char *)b64.data);
    esim_buf_free(&b64);
    assert_int_equal(header_put(ts.url, rfc3, body), 403);
    esim_cert_clear(&server);
    free(rfc);
    free(rfc2);
    free(rfc3);
    free(line);
    device_free(&d);
    device_free(&other);
    harness_stop(&ts);
}

/* Row: configuration from the environment, between the config file and
 * the command line. */
static pid_t serve_with_env(const char *const *env_vars, const char *extra_arg,
                            const char *extra_val)
{
    const char *bin = getenv("ESIM_MDM_BIN");
    assert_non_null(bin);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        for (size_t i = 0; env_vars[i]; i += 2)
            setenv(env_vars[i], env_vars[i + 1], 1);
        if (extra_arg)
            execl(bin, bin, "serve", extra_arg, extra_val, (char *)NULL);
        else
            execl(bin, bin, "serve", (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void test_environment_configuration(void **state)
{
    (void)state;
    char conf[400], data[400], token[400], port_a[400], port_b[400], port_c[400], text[2000];
    snprintf(conf, sizeof conf, "%s/env.conf", env.dir);
    snprintf(data, sizeof data, "%s/env-data", env.dir);
    snprintf(token, sizeof token, "%s/env.token", env.dir);
    snprintf(port_a, sizeof port_a, "%s/env-a.port", env.dir);
    snprintf(port_b, sizeof port_b, "%s/env-b.port", env.dir);
    snprintf(port_c, sizeof port_c, "%s/env-c.port", env.dir);
    FILE *f = fopen(token, "w");
    fputs(TEST_TOKEN "\n", f);
    fclose(f);
    chmod(token, 0600);
    snprintf(text, sizeof text,
             "listen 127.0.0.1:0\nport-file %s\ndata-dir %s\napi-token-file %s\n"
             "device-auth none\nmigration off\n",
             port_a, data, token);
    f = fopen(conf, "w");
    fputs(text, f);
    fclose(f);
    /* The environment beats the config file: port file B, migration on. */
    const char *vars[] = {
        "ESIM_MDM_CONFIG", conf, "ESIM_MDM_PORT_FILE", port_b, "ESIM_MDM_MIGRATION", "1", NULL};
    pid_t pid = serve_with_env(vars, NULL, NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", harness_await_port(port_b, pid, NULL));
    assert_int_not_equal(access(port_a, F_OK), 0);
    json_t *r = NULL;
    assert_int_equal(basic_call(url, "POST", "/migration", "<plist><dict/></plist>", &r), 400);
    json_decref(r);
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    /* The command line beats the environment. */
    pid = serve_with_env(vars, "--port-file", port_c);
    harness_await_port(port_c, pid, NULL);
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    /* A bad value from the environment is a usage error naming the variable. */
    const char *bad[] = {"ESIM_MDM_CONFIG", conf, "ESIM_MDM_MAX_BODY", "lots", NULL};
    const char *bin = getenv("ESIM_MDM_BIN");
    char cmd[1200], out[2048] = "";
    snprintf(cmd, sizeof cmd, "%s='%s' %s='%s' '%s' serve 2>&1", bad[0], bad[1], bad[2], bad[3],
             bin);
    FILE *p = popen(cmd, "r");
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = '\0';
    status = pclose(p);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    assert_non_null(strstr(out, "ESIM_MDM_MAX_BODY"));
    assert_non_null(strstr(out, "max-body"));
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enqueue_and_push_answers),
        cmocka_unit_test(test_version_and_migration),
        cmocka_unit_test(test_pushcert),
        cmocka_unit_test(test_checkins_and_webhooks),
        cmocka_unit_test(test_cert_header),
        cmocka_unit_test(test_environment_configuration),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
    curl_global_cleanup();
    return rc;
}
