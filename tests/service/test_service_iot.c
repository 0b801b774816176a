/*
 * test_service_iot.c — the eIM (docs/iot.md) over loopback: registration
 * and package queueing through the admin API, the ESipa endpoint's HTTP
 * checks, and DER exchanges made with the sgp32/ layer as an IPA makes them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "svc_harness.h"

static harness_env env;
static char eim_cert_path[400], eim_key_path[400], ci_path[400];

static int group_setup(void **state)
{
    (void)state;
    harness_env_setup(&env);
    /* The eIM's signing key and certificate, under the test CI's sibling CA. */
    esim_cert ca = {0}, eim = {0};
    assert_int_equal(esim_pki_load(env.pki, "ca", &ca, NULL), ESIM_OK);
    esim_cert_spec spec = {.common_name = "test eIM", .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&spec, &ca, &eim, NULL), ESIM_OK);
    snprintf(eim_cert_path, sizeof eim_cert_path, "%s/test-eim.pem", env.dir);
    snprintf(eim_key_path, sizeof eim_key_path, "%s/test-eim.key", env.dir);
    snprintf(ci_path, sizeof ci_path, "%s/ci.pem", env.pki);
    assert_int_equal(esim_cert_save(&eim, eim_cert_path, eim_key_path, NULL), ESIM_OK);
    esim_cert_clear(&eim);
    esim_cert_clear(&ca);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    harness_env_teardown(&env);
    return 0;
}

static void start(test_service *ts, const char *name, bool with_eim)
{
    esim_service_config cfg;
    memset(ts, 0, sizeof *ts);
    harness_config(&env, name, &cfg, ts->data_dir);
    if (with_eim) {
        cfg.eim_key_path = eim_key_path;
        cfg.eim_cert_path = eim_cert_path;
        cfg.euicc_ci_path = ci_path;
    }
    harness_start(ts, &cfg);
}

static void make_eid(char eid[ESIM_EID_LEN + 1], int n)
{
    snprintf(eid, ESIM_EID_LEN + 1, "890490320000000000000000%06d00", n);
    assert_int_equal(esim_eid_set_check_digits(eid, NULL), ESIM_OK);
}

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    if (userdata)
        esim_buf_append(userdata, ptr, size * nmemb);
    return size * nmemb;
}

/* POST to the ESipa endpoint; |ct| and |proto| NULL leave the header out. */
static long esipa_post(const char *base, const char *method, const char *ct, const char *proto,
                       const void *body, size_t len, esim_buf *reply)
{
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "%s/gsma/rsp2/asn1", base);
    struct curl_slist *h = NULL;
    char line[200];
    if (ct) {
        snprintf(line, sizeof line, "Content-Type: %s", ct);
        h = curl_slist_append(h, line);
    }
    if (proto) {
        snprintf(line, sizeof line, "X-Admin-Protocol: %s", proto);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    if (reply)
        esim_buf_free(reply);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, reply);
    long status = 0;
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

/* ---- the admin API ---------------------------------------------------------------------- */

static void test_register_and_queue(void **state)
{
    (void)state;
    test_service ts;
    start(&ts, "iot-api", false);
    char e1[ESIM_EID_LEN + 1], e2[ESIM_EID_LEN + 1], e3[ESIM_EID_LEN + 1];
    make_eid(e1, 1);
    make_eid(e2, 2);
    make_eid(e3, 3);
    char body[1024];
    snprintf(body, sizeof body,
             "{\"devices\":[{\"eid\":\"%s\",\"association_token\":5},"
             "{\"eid\":\"%s\",\"association_token\":6,\"counter\":40},"
             "{\"eid\":\"12345\",\"association_token\":1},"
             "{\"eid\":\"%s\",\"association_token\":0}]}",
             e1, e2, e3);
    json_t *out = NULL;
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/devices", body, NULL, &out),
                     200);
    json_t *list = json_object_get(out, "devices");
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "result")),
                        "registered");
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 2), "result")),
                        "error");
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(list, 3), "error")),
                           "association_token"));
    assert_int_equal(json_integer_value(json_object_get(out, "registered")), 2);
    json_decref(out);
    /* One object without the array; registered twice: "exists". */
    snprintf(body, sizeof body, "{\"eid\":\"%s\",\"association_token\":9}", e1);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/devices", body, NULL, &out),
                     200);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(out, "devices"), 0), "result")),
                        "exists");
    json_decref(out);

    /* Packages: refused ones change nothing. */
    snprintf(body, sizeof body,
             "{\"eids\":[\"%s\"],\"operations\":[{\"op\":\"enable\",\"iccid\":\"123\"}]}", e1);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/packages", body, NULL, &out),
                     400);
    json_decref(out);
    snprintf(body, sizeof body,
             "{\"eids\":[\"%s\"],\"operations\":[{\"op\":\"get_rat\"},{\"op\":\"list_eim\"}]}", e1);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/packages", body, NULL, &out),
                     400);
    json_decref(out);
    snprintf(body, sizeof body, "{\"eids\":[\"%s\",\"%s\"],\"operations\":[{\"op\":\"get_rat\"}]}",
             e1, e3);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/packages", body, NULL, &out),
                     404);
    json_decref(out);
    snprintf(body, sizeof body, "{\"eids\":[\"%s\"],\"download\":{\"activation_code\":\"x\"}}", e1);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/packages", body, NULL, &out),
                     400);
    json_decref(out);
    snprintf(body, sizeof body,
             "{\"eids\":[\"%s\",\"%s\"],\"operations\":[{\"op\":\"enable\",\"iccid\":"
             "\"8944476500000000013\"},{\"op\":\"list_profiles\"}]}",
             e1, e2);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/packages", body, NULL, &out),
                     201);
    char uuid[128];
    snprintf(uuid, sizeof uuid, "%s", json_string_value(json_object_get(out, "command_uuid")));
    json_decref(out);

    char path[256];
    snprintf(path, sizeof path, "/v1/iot/packages/%s", uuid);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &out), 200);
    assert_string_equal(json_string_value(json_object_get(out, "request_type")),
                        "EuiccPackage.PSMO");
    assert_string_equal(json_string_value(json_object_get(out, "summary")),
                        "enable 8944476500000000013, list profiles");
    assert_int_equal(json_array_size(json_object_get(out, "devices")), 2);
    json_decref(out);

    /* Diagnosis: registered, never polled, two packages queued (the eUICC
     * data request first). */
    snprintf(path, sizeof path, "/v1/iot/devices/%s", e1);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &out), 200);
    assert_string_equal(json_string_value(json_object_get(out, "state")), "registered");
    assert_int_equal(json_array_size(json_object_get(out, "packages")), 2);
    assert_non_null(strstr(json_string_value(json_object_get(out, "next_action")), "first poll"));
    json_decref(out);
    snprintf(path, sizeof path, "/v1/iot/devices/%s", e3);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &out), 404);
    json_decref(out);
    assert_int_equal(
        api_call(ts.url, TEST_TOKEN, "GET", "/v1/iot/devices?limit=1", NULL, NULL, &out), 200);
    assert_int_equal(json_array_size(json_object_get(out, "devices")), 1);
    assert_string_equal(json_string_value(json_object_get(out, "next_after")), e1);
    json_decref(out);
    harness_stop(&ts);
}

/* ---- the ESipa endpoint's HTTP checks ------------------------------------------------------ */

static void test_endpoint_http_checks(void **state)
{
    (void)state;
    test_service ts;
    start(&ts, "iot-http-off", false);
    esim_buf reply = {0};
    static const unsigned char poll[] = {0xBF, 0x4F, 0x03, 0x02, 0x01, 0x01};
    /* No eIM key: 503 with a sentence saying what to configure. */
    assert_int_equal(esipa_post(ts.url, "POST", "application/x-gsma-rsp-asn1", "gsma/rsp/v2.1.0",
                                poll, sizeof poll, &reply),
                     503);
    assert_int_equal(esim_buf_append(&reply, "", 1), ESIM_OK);
    assert_non_null(strstr((const char *)reply.data, "--eim-key"));
    harness_stop(&ts);

    start(&ts, "iot-http", true);
    assert_int_equal(esipa_post(ts.url, "GET", NULL, NULL, NULL, 0, NULL), 405);
    assert_int_equal(
        esipa_post(ts.url, "POST", "application/json", "gsma/rsp/v2.1.0", poll, sizeof poll, NULL),
        415);
    assert_int_equal(
        esipa_post(ts.url, "POST", "application/x-gsma-rsp-asn1", NULL, poll, sizeof poll, &reply),
        400);
    assert_int_equal(esim_buf_append(&reply, "", 1), ESIM_OK);
    assert_non_null(strstr((const char *)reply.data, "X-Admin-Protocol"));
    assert_int_equal(esipa_post(ts.url, "POST", "application/x-gsma-rsp-asn1", "gsma/rsp/v9", poll,
                                sizeof poll, NULL),
                     400);
    assert_int_equal(
        esipa_post(ts.url, "POST", "application/x-gsma-rsp-asn1", "gsma/rsp/v2.1.0", NULL, 0, NULL),
        400);
    assert_true(api_metric(ts.url, "esim_mdm_eim_refused_total") >= 4);
    esim_buf_free(&reply);
    harness_stop(&ts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_and_queue),
        cmocka_unit_test(test_endpoint_http_checks),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
