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
#include <unistd.h>

#include <cmocka.h>

#include "sgp32/sgp32.h"
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

/* ---- DER round trips, as an IPA and its eUICC make them ------------------------------------ */

static long esipa(const char *base, const esim_buf *body, esim_buf *reply)
{
    return esipa_post(base, "POST", "application/x-gsma-rsp-asn1", "gsma/rsp/v2.1.0", body->data,
                      body->len, reply);
}

/* A poll of |eid|: the decoded GetEimPackageResponse (the caller frees). */
static GetEimPackageResponse_t *poll_eim(const char *base, const char *eid)
{
    esim_buf req = {0}, reply = {0};
    assert_int_equal(sgp32_get_package_request(eid, &req, NULL), ESIM_OK);
    assert_int_equal(esipa(base, &req, &reply), 200);
    void *obj = NULL;
    esim_error e = {{0}};
    assert_int_equal(sgp32_decode(&asn_DEF_GetEimPackageResponse, reply.data, reply.len, &obj, &e),
                     ESIM_OK);
    esim_buf_free(&req);
    esim_buf_free(&reply);
    return obj;
}

static Certificate_t *cert_of(X509 *x)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    assert_true(len > 0);
    void *obj = NULL;
    assert_int_equal(sgp32_decode(&asn_DEF_Certificate, der, (size_t)len, &obj, NULL), ESIM_OK);
    OPENSSL_free(der);
    return obj;
}

/* Sends |r| wrapped as the IPA does; returns the status, the reply in |reply|. */
static long send_result(const char *base, ProvideEimPackageResult_t *r, esim_buf *reply)
{
    EsipaMessageFromIpaToEim_t m = {.present = EsipaMessageFromIpaToEim_PR_provideEimPackageResult};
    m.choice.provideEimPackageResult = *r;
    esim_buf der = {0};
    esim_error e = {{0}};
    assert_int_equal(sgp32_encode(&asn_DEF_EsipaMessageFromIpaToEim, &m, &der, &e), ESIM_OK);
    long st = esipa(base, &der, reply);
    esim_buf_free(&der);
    return st;
}

/* The signed result of a package (enable ok + one profile listed enabled),
 * with |counter| and signed by |key|; sent; returns the status. */
static long answer_package(const char *base, const char *eid, const EuiccPackageRequest_t *q,
                           long counter, EVP_PKEY *key, const char *iccid, esim_buf *reply)
{
    ProvideEimPackageResult_t *r = calloc(1, sizeof *r);
    r->present = ProvideEimPackageResult_PR_euiccPackageResult;
    EuiccPackageResult_t *epr = &r->choice.euiccPackageResult;
    epr->present = EuiccPackageResult_PR_euiccPackageResultSigned;
    EuiccPackageResultDataSigned_t *d =
        &epr->choice.euiccPackageResultSigned.euiccPackageResultDataSigned;
    OCTET_STRING_fromBuf(&d->eimId, (const char *)q->euiccPackageSigned.eimId.buf,
                         (int)q->euiccPackageSigned.eimId.size);
    d->counterValue = counter;
    uint8_t eb[16];
    assert_int_equal(sgp32_eid_to_bytes(eid, eb, NULL), ESIM_OK);
    d->transactionId = OCTET_STRING_new_fromBuf(&asn_DEF_TransactionId, (const char *)eb, 16);
    d->seqNumber = 7;
    EuiccResultData_t *en = calloc(1, sizeof *en);
    en->present = EuiccResultData_PR_enableResult;
    en->choice.enableResult = 0;
    ASN_SEQUENCE_ADD(&d->euiccResult.list, en);
    EuiccResultData_t *li = calloc(1, sizeof *li);
    li->present = EuiccResultData_PR_listProfileInfoResult;
    li->choice.listProfileInfoResult.present = Sgp32ProfileInfoListResponse_PR_profileInfoListOk;
    ProfileInfo_t *pi = calloc(1, sizeof *pi);
    uint8_t ib[10];
    assert_int_equal(sgp32_iccid_to_bytes(iccid, ib, NULL), ESIM_OK);
    pi->iccid = OCTET_STRING_new_fromBuf(&asn_DEF_Iccid, (const char *)ib, 10);
    pi->profileState = calloc(1, sizeof *pi->profileState);
    *pi->profileState = 1;
    ASN_SEQUENCE_ADD(&li->choice.listProfileInfoResult.choice.profileInfoListOk.list, pi);
    ASN_SEQUENCE_ADD(&d->euiccResult.list, li);
    assert_int_equal(sgp32_result_sign(epr, key, q->eimSignature.buf, q->eimSignature.size, NULL),
                     ESIM_OK);
    long st = send_result(base, r, reply);
    sgp32_free(&asn_DEF_ProvideEimPackageResult, r);
    return st;
}

static json_t *package_of(const char *base, const char *uuid)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/iot/packages/%s", uuid);
    json_t *out = NULL;
    assert_int_equal(api_call(base, TEST_TOKEN, "GET", path, NULL, NULL, &out), 200);
    return out;
}

static void enqueue_enable(const char *base, const char *eid, const char *iccid, char uuid[128])
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"eids\":[\"%s\"],\"operations\":[{\"op\":\"enable\",\"iccid\":\"%s\"},"
             "{\"op\":\"list_profiles\"}]}",
             eid, iccid);
    json_t *out = NULL;
    assert_int_equal(api_call(base, TEST_TOKEN, "POST", "/v1/iot/packages", body, NULL, &out), 201);
    snprintf(uuid, 128, "%s", json_string_value(json_object_get(out, "command_uuid")));
    json_decref(out);
}

static void test_package_round_trip(void **state)
{
    (void)state;
    test_service ts;
    start(&ts, "iot-der", true);
    char eid[ESIM_EID_LEN + 1], stranger[ESIM_EID_LEN + 1];
    make_eid(eid, 10);
    make_eid(stranger, 11);
    const char *iccid = "8944476500000000013";
    /* The eUICC: a P-256 key and certificate under the test EUM, naming its EID. */
    esim_cert eum = {0}, euicc = {0}, other = {0}, eim = {0};
    assert_int_equal(esim_pki_load(env.pki, "eum", &eum, NULL), ESIM_OK);
    esim_cert_spec spec = {
        .common_name = "test eUICC", .serial_number = eid, .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&spec, &eum, &euicc, NULL), ESIM_OK);
    esim_cert_spec ospec = {.common_name = "another key", .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&ospec, NULL, &other, NULL), ESIM_OK);
    assert_int_equal(esim_cert_load(eim_cert_path, NULL, &eim, NULL), ESIM_OK);
    EVP_PKEY *eim_pub = X509_get_pubkey(eim.x509);

    /* Not registered: no package, and diagnosis says so. */
    GetEimPackageResponse_t *g = poll_eim(ts.url, stranger);
    assert_int_equal(g->present, GetEimPackageResponse_PR_eimPackageError);
    assert_int_equal(g->choice.eimPackageError, 1);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);
    char path[256];
    json_t *out = NULL;
    snprintf(path, sizeof path, "/v1/iot/devices/%s", stranger);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &out), 200);
    assert_string_equal(json_string_value(json_object_get(out, "state")), "unregistered");
    assert_non_null(
        strstr(json_string_value(json_object_get(out, "next_action")), "not registered"));
    json_decref(out);

    /* Bad DER: 400, nothing changes. */
    esim_buf junk = {0}, reply = {0};
    assert_int_equal(esim_buf_append(&junk, "\xBF\x4F\x05\x5A\x01", 5), ESIM_OK);
    assert_int_equal(esipa(ts.url, &junk, &reply), 400);
    esim_buf_free(&junk);

    char body[256];
    snprintf(body, sizeof body, "{\"eid\":\"%s\",\"association_token\":5}", eid);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/iot/devices", body, NULL, NULL),
                     200);
    char uuid[128];
    enqueue_enable(ts.url, eid, iccid, uuid);

    /* First: the eUICC data request, answered with the certificates. */
    g = poll_eim(ts.url, eid);
    assert_int_equal(g->present, GetEimPackageResponse_PR_ipaEuiccDataRequest);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);
    ProvideEimPackageResult_t *r = calloc(1, sizeof *r);
    r->present = ProvideEimPackageResult_PR_ipaEuiccDataResponse;
    r->choice.ipaEuiccDataResponse.present = IpaEuiccDataResponse_PR_ipaEuiccData;
    r->choice.ipaEuiccDataResponse.choice.ipaEuiccData.euiccCertificate = cert_of(euicc.x509);
    r->choice.ipaEuiccDataResponse.choice.ipaEuiccData.eumCertificate = cert_of(eum.x509);
    assert_int_equal(send_result(ts.url, r, &reply), 200);
    sgp32_free(&asn_DEF_ProvideEimPackageResult, r);
    snprintf(path, sizeof path, "/v1/iot/devices/%s", eid);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &out), 200);
    assert_string_equal(json_string_value(json_object_get(out, "state")), "ready");
    json_decref(out);

    /* The package: signed by the eIM over its counter and the token. */
    g = poll_eim(ts.url, eid);
    assert_int_equal(g->present, GetEimPackageResponse_PR_euiccPackageRequest);
    EuiccPackageRequest_t *q = &g->choice.euiccPackageRequest;
    long token = 5;
    assert_int_equal(q->euiccPackageSigned.counterValue, 1);
    assert_int_equal(sgp32_package_verify(q, eim_pub, &token, NULL), ESIM_OK);
    assert_int_equal(q->euiccPackageSigned.euiccPackage.present, EuiccPackage_PR_psmoList);
    assert_int_equal(q->euiccPackageSigned.euiccPackage.choice.psmoList.list.count, 2);
    assert_int_equal(answer_package(ts.url, eid, q, 1, euicc.key, iccid, &reply), 200);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);
    /* The eIM acknowledges the result's notification (seqNumber 7). */
    void *obj = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_ProvideEimPackageResultResponse, reply.data, reply.len, &obj, NULL),
        ESIM_OK);
    ProvideEimPackageResultResponse_t *resp = obj;
    assert_non_null(resp->eimAcknowledgements);
    assert_int_equal(resp->eimAcknowledgements->list.count, 1);
    assert_int_equal(*resp->eimAcknowledgements->list.array[0], 7);
    sgp32_free(&asn_DEF_ProvideEimPackageResultResponse, obj);
    out = package_of(ts.url, uuid);
    json_t *dev = json_array_get(json_object_get(out, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(dev, "state")), "done");
    assert_string_equal(json_string_value(json_object_get(dev, "queue_state")), "acknowledged");
    const char *words = json_string_value(json_object_get(json_object_get(dev, "result"), "words"));
    assert_non_null(strstr(words, "enable: ok"));
    assert_non_null(strstr(words, "1 profile"));
    json_decref(out);
    /* Nothing more queued. */
    g = poll_eim(ts.url, eid);
    assert_int_equal(g->present, GetEimPackageResponse_PR_eimPackageError);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);

    /* A result echoing another counter: kept, as a counter error. */
    enqueue_enable(ts.url, eid, iccid, uuid);
    g = poll_eim(ts.url, eid);
    assert_int_equal(g->choice.euiccPackageRequest.euiccPackageSigned.counterValue, 2);
    assert_int_equal(
        answer_package(ts.url, eid, &g->choice.euiccPackageRequest, 99, euicc.key, iccid, &reply),
        200);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);
    out = package_of(ts.url, uuid);
    dev = json_array_get(json_object_get(out, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(dev, "state")), "counter_error");
    assert_string_equal(json_string_value(json_object_get(dev, "queue_state")), "error");
    assert_non_null(strstr(json_string_value(json_object_get(dev, "error")), "counter 99"));
    json_decref(out);
    /* A result signed by another key: kept, as a signature error. */
    enqueue_enable(ts.url, eid, iccid, uuid);
    g = poll_eim(ts.url, eid);
    assert_int_equal(g->choice.euiccPackageRequest.euiccPackageSigned.counterValue, 3);
    assert_int_equal(
        answer_package(ts.url, eid, &g->choice.euiccPackageRequest, 3, other.key, iccid, &reply),
        200);
    /* Answered again: no package waits for it any more. */
    assert_int_equal(
        answer_package(ts.url, eid, &g->choice.euiccPackageRequest, 3, euicc.key, iccid, &reply),
        400);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);
    out = package_of(ts.url, uuid);
    dev = json_array_get(json_object_get(out, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(dev, "state")), "signature_error");
    assert_non_null(strstr(json_string_value(json_object_get(dev, "error")), "does not verify"));
    json_decref(out);
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &out), 200);
    assert_non_null(
        strstr(json_string_value(json_object_get(out, "next_action")), "failed verification"));
    json_decref(out);
    assert_int_equal(api_metric(ts.url, "esim_mdm_eim_results_total{state=\"signature_error\"}"),
                     1);
    assert_int_equal(api_metric(ts.url, "esim_mdm_eim_results_total{state=\"done\"}"), 2);
    assert_int_equal(api_metric(ts.url, "esim_mdm_eim_results_total{state=\"counter_error\"}"), 1);

    esim_buf_free(&reply);
    EVP_PKEY_free(eim_pub);
    esim_cert_clear(&eim);
    esim_cert_clear(&other);
    esim_cert_clear(&euicc);
    esim_cert_clear(&eum);
    harness_stop(&ts);
}

/* Registers |eid| (token 5) and answers its eUICC data request: ready. */
static void make_ready(const char *base, const char *eid, const esim_cert *euicc,
                       const esim_cert *eum)
{
    char body[256];
    snprintf(body, sizeof body, "{\"eid\":\"%s\",\"association_token\":5}", eid);
    assert_int_equal(api_call(base, TEST_TOKEN, "POST", "/v1/iot/devices", body, NULL, NULL), 200);
    GetEimPackageResponse_t *g = poll_eim(base, eid);
    assert_int_equal(g->present, GetEimPackageResponse_PR_ipaEuiccDataRequest);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);
    ProvideEimPackageResult_t *r = calloc(1, sizeof *r);
    r->present = ProvideEimPackageResult_PR_ipaEuiccDataResponse;
    r->choice.ipaEuiccDataResponse.present = IpaEuiccDataResponse_PR_ipaEuiccData;
    r->choice.ipaEuiccDataResponse.choice.ipaEuiccData.euiccCertificate = cert_of(euicc->x509);
    r->choice.ipaEuiccDataResponse.choice.ipaEuiccData.eumCertificate = cert_of(eum->x509);
    esim_buf reply = {0};
    assert_int_equal(send_result(base, r, &reply), 200);
    esim_buf_free(&reply);
    sgp32_free(&asn_DEF_ProvideEimPackageResult, r);
}

/* Polls until a package comes (a campaign queues on its own schedule). */
static GetEimPackageResponse_t *poll_until_package(const char *base, const char *eid)
{
    for (int i = 0; i < 200; i++) {
        GetEimPackageResponse_t *g = poll_eim(base, eid);
        if (g->present != GetEimPackageResponse_PR_eimPackageError)
            return g;
        sgp32_free(&asn_DEF_GetEimPackageResponse, g);
        usleep(50 * 1000);
    }
    fail_msg("no package came");
    return NULL;
}

/* The IPA's download result: a successful ProfileInstallationResult for
 * |iccid|, with the EID echoed in eimTransactionId. */
static long answer_download(const char *base, const char *eid, const char *iccid)
{
    ProvideEimPackageResult_t *r = calloc(1, sizeof *r);
    r->present = ProvideEimPackageResult_PR_profileDownloadTriggerResult;
    ProfileDownloadTriggerResult_t *t = &r->choice.profileDownloadTriggerResult;
    uint8_t eb[16], ib[10];
    assert_int_equal(sgp32_eid_to_bytes(eid, eb, NULL), ESIM_OK);
    assert_int_equal(sgp32_iccid_to_bytes(iccid, ib, NULL), ESIM_OK);
    t->eimTransactionId = OCTET_STRING_new_fromBuf(&asn_DEF_TransactionId, (const char *)eb, 16);
    t->profileDownloadTriggerResultData.present =
        ProfileDownloadTriggerResult__profileDownloadTriggerResultData_PR_profileInstallationResult;
    ProfileInstallationResult_t *pir =
        &t->profileDownloadTriggerResultData.choice.profileInstallationResult;
    ProfileInstallationResultData_t *d = &pir->profileInstallationResultData;
    OCTET_STRING_fromBuf(&d->transactionId, "\x01\x02\x03\x04", 4);
    d->notificationMetadata.seqNumber = 3;
    static const uint8_t install_bit = 0x80;
    d->notificationMetadata.profileManagementOperation.buf = malloc(1);
    d->notificationMetadata.profileManagementOperation.buf[0] = install_bit;
    d->notificationMetadata.profileManagementOperation.size = 1;
    d->notificationMetadata.profileManagementOperation.bits_unused = 7;
    OCTET_STRING_fromBuf(&d->notificationMetadata.notificationAddress, "127.0.0.1", -1);
    d->notificationMetadata.iccid = OCTET_STRING_new_fromBuf(&asn_DEF_Iccid, (const char *)ib, 10);
    unsigned arcs[] = {2, 999, 10};
    assert_int_equal(OBJECT_IDENTIFIER_set_arcs(&d->smdpOid, arcs, sizeof arcs[0], 3), 0);
    d->finalResult.present = ProfileInstallationResultData__finalResult_PR_successResult;
    OCTET_STRING_fromBuf(&d->finalResult.choice.successResult.aid,
                         "\xA0\x00\x00\x05\x59\x10\x10\x01\x02\x03\x04\x05\x06\x07\x08\x09", 16);
    OCTET_STRING_fromBuf(&d->finalResult.choice.successResult.simaResponse, "", 0);
    uint8_t sig[64] = {1};
    OCTET_STRING_fromBuf(&pir->euiccSignPIR, (const char *)sig, 64);
    esim_buf reply = {0};
    long st = send_result(base, r, &reply);
    if (st == 200) {
        void *obj = NULL;
        assert_int_equal(sgp32_decode(&asn_DEF_ProvideEimPackageResultResponse, reply.data,
                                      reply.len, &obj, NULL),
                         ESIM_OK);
        ProvideEimPackageResultResponse_t *resp = obj;
        assert_non_null(resp->eimAcknowledgements);
        assert_int_equal(*resp->eimAcknowledgements->list.array[0], 3);
        sgp32_free(&asn_DEF_ProvideEimPackageResultResponse, obj);
    }
    esim_buf_free(&reply);
    sgp32_free(&asn_DEF_ProvideEimPackageResult, r);
    return st;
}

/* A campaign over an IoT eUICC, end to end through the campaign layer:
 * install (a download trigger from the campaign's SM-DP+), then verify (a
 * PSMO package enabling the expected ICCID and listing the profiles). */
static void test_campaign_end_to_end(void **state)
{
    (void)state;
    test_service ts;
    start(&ts, "iot-campaign", true);
    char eid[ESIM_EID_LEN + 1];
    make_eid(eid, 20);
    const char *iccid = "8944476500000000021";
    esim_cert eum = {0}, euicc = {0};
    assert_int_equal(esim_pki_load(env.pki, "eum", &eum, NULL), ESIM_OK);
    esim_cert_spec spec = {
        .common_name = "test eUICC", .serial_number = eid, .key_type = ESIM_KEY_EC_P256};
    assert_int_equal(esim_cert_issue(&spec, &eum, &euicc, NULL), ESIM_OK);
    make_ready(ts.url, eid, &euicc, &eum);
    char body[512];
    snprintf(body, sizeof body, "%s,LPA:1$smdp.example.com$IOT-1,%s\n", eid, iccid);
    assert_int_equal(
        api_call(ts.url, TEST_TOKEN, "POST", "/v1/import/activation-codes", body, "text/csv", NULL),
        200);
    snprintf(body, sizeof body,
             "{\"name\":\"iot\",\"target\":{\"platform\":\"iot\"},\"steps\":[\"refresh\","
             "\"verify\"],\"smdp_url\":\"https://127.0.0.1:9\",\"settings\":{\"verify_attempts\":"
             "1,\"retry_base_s\":0.2}}");
    json_t *out = NULL;
    assert_int_equal(api_call(ts.url, TEST_TOKEN, "POST", "/v1/campaigns", body, NULL, &out), 201);
    char id[128];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(out, "id")));
    json_decref(out);

    GetEimPackageResponse_t *g = poll_until_package(ts.url, eid);
    assert_int_equal(g->present, GetEimPackageResponse_PR_profileDownloadTriggerRequest);
    ProfileDownloadData_t *pd = g->choice.profileDownloadTriggerRequest.profileDownloadData;
    assert_non_null(pd);
    assert_int_equal(pd->present, ProfileDownloadData_PR_activationCode);
    assert_int_equal(pd->choice.activationCode.size, strlen("1$127.0.0.1:9"));
    assert_memory_equal(pd->choice.activationCode.buf, "1$127.0.0.1:9", 13);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);
    assert_int_equal(answer_download(ts.url, eid, iccid), 200);

    g = poll_until_package(ts.url, eid);
    assert_int_equal(g->present, GetEimPackageResponse_PR_euiccPackageRequest);
    EuiccPackage_t *pkg = &g->choice.euiccPackageRequest.euiccPackageSigned.euiccPackage;
    assert_int_equal(pkg->choice.psmoList.list.count, 2);
    assert_int_equal(pkg->choice.psmoList.list.array[0]->present, Psmo_PR_enable);
    assert_int_equal(pkg->choice.psmoList.list.array[1]->present, Psmo_PR_listProfileInfo);
    esim_buf reply = {0};
    assert_int_equal(answer_package(ts.url, eid, &g->choice.euiccPackageRequest,
                                    g->choice.euiccPackageRequest.euiccPackageSigned.counterValue,
                                    euicc.key, iccid, &reply),
                     200);
    esim_buf_free(&reply);
    sgp32_free(&asn_DEF_GetEimPackageResponse, g);

    char path[200];
    snprintf(path, sizeof path, "/v1/campaigns/%s", id);
    const char *st = NULL;
    for (int i = 0; i < 200; i++) {
        assert_int_equal(api_call(ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &out), 200);
        st = json_string_value(json_object_get(out, "state"));
        if (st && strcmp(st, "finished") == 0)
            break;
        json_decref(out);
        out = NULL;
        usleep(50 * 1000);
    }
    assert_non_null(out);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(out, "counts"), "verified")), 1);
    json_decref(out);
    esim_cert_clear(&euicc);
    esim_cert_clear(&eum);
    harness_stop(&ts);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_and_queue),
        cmocka_unit_test(test_endpoint_http_checks),
        cmocka_unit_test(test_package_round_trip),
        cmocka_unit_test(test_campaign_end_to_end),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
