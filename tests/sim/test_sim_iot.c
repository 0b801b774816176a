/*
 * test_sim_iot.c — simulated IoT devices (devsim's IoT fleet: a virtual
 * eUICC and an IPA each) against a small eIM written here on sgp32/ and
 * evhttp: the association list arrives at POST /v1/iot/devices with the
 * tokens the eUICCs gave at AddInitialEim (sent again after a first 503);
 * each device's polls get an
 * IpaEuiccDataRequest (answered with its certificates), a signed PSMO
 * package (list profiles + get RAT: a result signed by the eUICC, verified
 * here with the certificate it sent, counter and eimId echoed), the same
 * package again (refused: replayError, signed), a download trigger (fails:
 * no data connection / no SM-DP+) and then nothing more; results are
 * acknowledged and the IPA removes them from the eUICC. Polling often, each
 * device keeps one connection from cycle to cycle.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <openssl/x509.h>

#include "sgp32/sgp32.h"
#include "sim_test.h"

#define N_DEVICES 4

typedef struct {
    char eid[ESIM_EID_LEN + 1];
    int step;
    X509 *cert;           /* the eUICC certificate it sent */
    uint8_t last_sig[64]; /* eimSignature of the last package */
    long counter;         /* counter of the last package */
    int results_verified, replays_refused, data_answers, downloads_failed, bad;
    long last_seq;
    uint16_t port;   /* the client port of its last poll */
    int connections; /* the connections its polls came on */
} eim_dev;

typedef struct {
    struct event_base *base;
    struct evhttp *http;
    uint16_t port;
    EVP_PKEY *key;
    eim_dev devs[N_DEVICES];
    size_t n_devs;
    json_t *registered; /* what POST /v1/iot/devices brought */
    int register_calls; /* the first is answered 503: devsim sends the list again */
    eim_dev *last;      /* the device given the last package */
    int bad_requests, polls_unknown, done_devices;
} mini_eim;

static eim_dev *dev_for(mini_eim *m, const char *eid)
{
    for (size_t i = 0; i < m->n_devs; i++)
        if (strcmp(m->devs[i].eid, eid) == 0)
            return &m->devs[i];
    if (m->n_devs == N_DEVICES)
        return NULL;
    eim_dev *d = &m->devs[m->n_devs++];
    snprintf(d->eid, sizeof d->eid, "%s", eid);
    return d;
}

static void reply(struct evhttp_request *req, int code, const esim_buf *der)
{
    struct evbuffer *out = evbuffer_new();
    if (der)
        evbuffer_add(out, der->data, der->len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      SGP32_ESIPA_CONTENT_TYPE);
    evhttp_send_reply(req, code, "OK", out);
    evbuffer_free(out);
}

/* A signed PSMO package: listProfileInfo + getRAT, counter |counter|. */
static void package(mini_eim *m, eim_dev *d, long counter, long token, esim_buf *out)
{
    GetEimPackageResponse_t resp = {.present = GetEimPackageResponse_PR_euiccPackageRequest};
    EuiccPackageRequest_t *req = &resp.choice.euiccPackageRequest;
    EuiccPackageSigned_t *s = &req->euiccPackageSigned;
    uint8_t eid[16];
    assert_int_equal(sgp32_eid_to_bytes(d->eid, eid, NULL), ESIM_OK);
    assert_int_equal(OCTET_STRING_fromString(&s->eimId, "esim-mdm"), 0);
    assert_int_equal(OCTET_STRING_fromBuf(&s->eidValue, (const char *)eid, 16), 0);
    s->counterValue = counter;
    s->euiccPackage.present = EuiccPackage_PR_psmoList;
    Psmo_t *list = calloc(1, sizeof *list), *rat = calloc(1, sizeof *rat);
    list->present = Psmo_PR_listProfileInfo;
    rat->present = Psmo_PR_getRAT;
    ASN_SEQUENCE_ADD(&s->euiccPackage.choice.psmoList.list, list);
    ASN_SEQUENCE_ADD(&s->euiccPackage.choice.psmoList.list, rat);
    esim_error err = {{0}};
    assert_int_equal(sgp32_package_sign(req, m->key, &token, &err), ESIM_OK);
    memcpy(d->last_sig, req->eimSignature.buf, 64);
    d->counter = counter;
    assert_int_equal(sgp32_encode(&asn_DEF_GetEimPackageResponse, &resp, out, &err), ESIM_OK);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_GetEimPackageResponse, &resp);
}

static long token_of(mini_eim *m, const char *eid)
{
    size_t k;
    json_t *line;
    json_array_foreach(json_object_get(m->registered, "devices"), k, line)
    {
        if (strcmp(json_string_value(json_object_get(line, "eid")), eid) == 0)
            return (long)json_integer_value(json_object_get(line, "association_token"));
    }
    return -1;
}

static void on_poll(mini_eim *m, struct evhttp_request *req, const GetEimPackageRequest_t *g)
{
    char eid[33];
    esim_buf out = {0};
    if (sgp32_eid_from_bytes(g->eidValue.buf, g->eidValue.size, eid, NULL) != ESIM_OK) {
        m->bad_requests++;
        reply(req, 400, NULL);
        return;
    }
    eim_dev *d = dev_for(m, eid);
    long token = token_of(m, eid);
    char *peer = NULL;
    uint16_t port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &peer, &port);
    if (d && port != d->port) {
        d->port = port;
        d->connections++;
    }
    if (!d || token < 0) {
        m->polls_unknown++;
        sgp32_no_package(&out);
        reply(req, 200, &out);
        esim_buf_free(&out);
        return;
    }
    switch (d->step) {
    case 0: { /* the eUICC's certificates first */
        GetEimPackageResponse_t resp = {.present = GetEimPackageResponse_PR_ipaEuiccDataRequest};
        static const uint8_t tags[] = {0xa5, 0xa6};
        OCTET_STRING_fromBuf(&resp.choice.ipaEuiccDataRequest.tagList, (const char *)tags, 2);
        assert_int_equal(sgp32_encode(&asn_DEF_GetEimPackageResponse, &resp, &out, NULL), ESIM_OK);
        ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_GetEimPackageResponse, &resp);
        break;
    }
    case 1:
        package(m, d, 1, token, &out);
        break;
    case 2: /* the same counter again: a replay */
        package(m, d, 1, token, &out);
        break;
    case 3: {
        GetEimPackageResponse_t resp = {.present =
                                            GetEimPackageResponse_PR_profileDownloadTriggerRequest};
        ProfileDownloadTriggerRequest_t *t = &resp.choice.profileDownloadTriggerRequest;
        t->profileDownloadData = calloc(1, sizeof *t->profileDownloadData);
        t->profileDownloadData->present = ProfileDownloadData_PR_activationCode;
        OCTET_STRING_fromString(&t->profileDownloadData->choice.activationCode,
                                "1$smdp.invalid$MATCH-1");
        t->eimTransactionId = OCTET_STRING_new_fromBuf(&asn_DEF_OCTET_STRING, "\x01\x02", 2);
        assert_int_equal(sgp32_encode(&asn_DEF_GetEimPackageResponse, &resp, &out, NULL), ESIM_OK);
        ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_GetEimPackageResponse, &resp);
        break;
    }
    default:
        if (d->step == 4)
            m->done_devices++;
        sgp32_no_package(&out);
        break;
    }
    if (d->step <= 3)
        m->last = d;
    d->step++;
    reply(req, 200, &out);
    esim_buf_free(&out);
}

/* The result of the package or data request sent to |d| last. */
static void on_result(mini_eim *m, eim_dev *d, const ProvideEimPackageResult_t *p,
                      EimAcknowledgements_t *acks)
{
    esim_error err = {{0}};
    switch (p->present) {
    case ProvideEimPackageResult_PR_ipaEuiccDataResponse: {
        const IpaEuiccDataResponse_t *r = &p->choice.ipaEuiccDataResponse;
        if (r->present != IpaEuiccDataResponse_PR_ipaEuiccData ||
            !r->choice.ipaEuiccData.euiccCertificate) {
            d->bad++;
            return;
        }
        esim_buf der = {0};
        assert_int_equal(
            sgp32_encode(&asn_DEF_Certificate, r->choice.ipaEuiccData.euiccCertificate, &der, &err),
            ESIM_OK);
        const unsigned char *q = der.data;
        d->cert = d2i_X509(NULL, &q, (long)der.len);
        esim_buf_free(&der);
        if (!d->cert)
            d->bad++;
        else
            d->data_answers++;
        return;
    }
    case ProvideEimPackageResult_PR_euiccPackageResult: {
        const EuiccPackageResult_t *r = &p->choice.euiccPackageResult;
        if (!d->cert ||
            sgp32_result_verify(r, X509_get0_pubkey(d->cert), d->last_sig, 64, &err) != ESIM_OK) {
            d->bad++;
            return;
        }
        if (r->present == EuiccPackageResult_PR_euiccPackageResultSigned) {
            const EuiccPackageResultDataSigned_t *s =
                &r->choice.euiccPackageResultSigned.euiccPackageResultDataSigned;
            if (s->counterValue != d->counter || s->euiccResult.list.count != 2 ||
                strncmp((const char *)s->eimId.buf, "esim-mdm", 8) != 0) {
                d->bad++;
                return;
            }
            d->results_verified++;
            d->last_seq = s->seqNumber;
            long *seq = calloc(1, sizeof *seq);
            *seq = s->seqNumber;
            ASN_SEQUENCE_ADD(&acks->list, seq);
        } else if (r->choice.euiccPackageErrorSigned.euiccPackageErrorDataSigned
                       .euiccPackageErrorCode ==
                   EuiccPackageErrorDataSigned__euiccPackageErrorCode_replayError) {
            d->replays_refused++;
        } else {
            d->bad++;
        }
        return;
    }
    case ProvideEimPackageResult_PR_profileDownloadTriggerResult: {
        const ProfileDownloadTriggerResult_t *t = &p->choice.profileDownloadTriggerResult;
        if (t->profileDownloadTriggerResultData.present ==
                ProfileDownloadTriggerResult__profileDownloadTriggerResultData_PR_profileDownloadError &&
            t->eimTransactionId && t->eimTransactionId->size == 2)
            d->downloads_failed++;
        else
            d->bad++;
        return;
    }
    default:
        d->bad++;
    }
}

static void on_esipa(struct evhttp_request *req, void *arg)
{
    mini_eim *m = arg;
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *ct = evhttp_find_header(h, "Content-Type");
    const char *ap = evhttp_find_header(h, "X-Admin-Protocol");
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    uint8_t *body = evbuffer_pullup(in, (ssize_t)len);
    EsipaMessageFromIpaToEim_t *msg = NULL;
    if (!ct || strcmp(ct, SGP32_ESIPA_CONTENT_TYPE) != 0 || !ap ||
        strcmp(ap, SGP32_ADMIN_PROTOCOL) != 0 ||
        sgp32_decode(&asn_DEF_EsipaMessageFromIpaToEim, body, len, (void **)&msg, NULL) !=
            ESIM_OK) {
        m->bad_requests++;
        reply(req, 400, NULL);
        return;
    }
    if (msg->present == EsipaMessageFromIpaToEim_PR_getEimPackageRequest) {
        on_poll(m, req, &msg->choice.getEimPackageRequest);
    } else if (msg->present == EsipaMessageFromIpaToEim_PR_provideEimPackageResult) {
        /* whose result? the one device whose step says it is waiting for one */
        EsipaMessageFromEimToIpa_t ans = {
            .present = EsipaMessageFromEimToIpa_PR_provideEimPackageResultResponse};
        EimAcknowledgements_t *acks = calloc(1, sizeof *acks);
        /* ESipa v1.0 results carry no EID: this eIM serves one device at a
         * time (devsim's max_concurrent 1), so it is the last one given a
         * package. */
        eim_dev *d = m->last;
        if (d)
            on_result(m, d, &msg->choice.provideEimPackageResult, acks);
        if (acks->list.count)
            ans.choice.provideEimPackageResultResponse.eimAcknowledgements = acks;
        else
            free(acks);
        esim_buf out = {0};
        assert_int_equal(sgp32_encode(&asn_DEF_EsipaMessageFromEimToIpa, &ans, &out, NULL),
                         ESIM_OK);
        ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromEimToIpa, &ans);
        reply(req, 200, &out);
        esim_buf_free(&out);
    } else {
        m->bad_requests++;
        reply(req, 400, NULL);
    }
    sgp32_free(&asn_DEF_EsipaMessageFromIpaToEim, msg);
}

/* POST /v1/iot/devices: the association list, as the service takes it. */
static void on_register(struct evhttp_request *req, void *arg)
{
    mini_eim *m = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (m->register_calls++ == 0) {
        evhttp_send_reply(req, 503, "Service Unavailable", NULL);
        return;
    }
    json_t *j = json_loadb((const char *)evbuffer_pullup(in, (ssize_t)len), len, 0, NULL);
    json_t *answer = json_pack("{s:[]}", "devices");
    if (!auth || strcmp(auth, "Bearer operator-key") != 0 ||
        !json_is_array(json_object_get(j, "devices"))) {
        m->bad_requests++;
    } else {
        size_t k;
        json_t *line;
        json_array_foreach(json_object_get(j, "devices"), k, line)
        {
            json_array_append(json_object_get(m->registered, "devices"), line);
            json_array_append_new(json_object_get(answer, "devices"),
                                  json_pack("{s:O, s:s}", "eid", json_object_get(line, "eid"),
                                            "result", "registered"));
        }
    }
    char *text = json_dumps(answer, JSON_COMPACT);
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, text, strlen(text));
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
    free(text);
    json_decref(answer);
    json_decref(j);
}

static void test_iot_devices_poll_the_eim(void **state)
{
    (void)state;
    char *dir = st_tempdir();
    char pki_dir[256], data_dir[256];
    snprintf(pki_dir, sizeof pki_dir, "%s/pki", dir);
    snprintf(data_dir, sizeof data_dir, "%s/data", dir);
    esim_error err = {{0}};
    assert_int_equal(esim_pki_create(pki_dir, &err), ESIM_OK);
    esim_cert eim = {0};
    assert_int_equal(esim_pki_load(pki_dir, "eim", &eim, &err), ESIM_OK);

    mini_eim m = {.key = eim.key};
    m.registered = json_pack("{s:[]}", "devices");
    m.base = event_base_new();
    m.http = evhttp_new(m.base);
    evhttp_set_cb(m.http, "/gsma/rsp2/asn1", on_esipa, &m);
    evhttp_set_cb(m.http, "/v1/iot/devices", on_register, &m);
    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(m.http, "127.0.0.1", 0);
    assert_non_null(sock);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&sa, &sl);
    m.port = ntohs(sa.sin_port);

    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", m.port);
    /* the SM-DP+ of the trigger refuses connections: downloads fail fast */
    static const char *const resolve[] = {"smdp.invalid=127.0.0.1:1"};
    sim_devsim_config cfg = {.server_url = url,
                             .pki_dir = pki_dir,
                             .data_dir = data_dir,
                             .devices = 0,
                             .seed = 7,
                             .iot_devices = N_DEVICES,
                             .iot_poll_ms = 150,
                             .iot_fail_share = 0.5,
                             .max_concurrent = 1,
                             .api_url = url,
                             .api_key = "operator-key",
                             .smdp_resolve = resolve,
                             .n_smdp_resolve = 1};
    sim_devsim *s = NULL;
    if (sim_devsim_new(m.base, &cfg, &s, &err) != ESIM_OK)
        fail_msg("devsim: %s", err.msg);
    assert_int_equal(sim_devsim_iot_count(s), N_DEVICES);
    int64_t start = esim_mono_ms();
    /* until every IPA has finished the cycle that ended on "no package" */
    for (;;) {
        sim_iotfleet_stats o = sim_devsim_get_stats(s).iot;
        if ((m.done_devices == N_DEVICES && o.packages_ok >= N_DEVICES &&
             o.packages_refused >= N_DEVICES && o.downloads_failed >= N_DEVICES) ||
            esim_mono_ms() - start > 60000)
            break;
        event_base_loop(m.base, EVLOOP_ONCE);
    }
    sim_devsim_stats t = sim_devsim_get_stats(s);
    print_message("iot: %zu cycles, %zu polls, %zu packages ok, %zu refused, %zu data, "
                  "%zu downloads failed, %zu acknowledged, %zu registered\n",
                  t.iot.cycles, t.iot.polls, t.iot.packages_ok, t.iot.packages_refused,
                  t.iot.data_requests, t.iot.downloads_failed, t.iot.acknowledged,
                  t.iot.registered);
    for (size_t i = 0; i < m.n_devs; i++)
        print_message("eim: %s step %d bad %d data %d ok %d replay %d dl %d\n", m.devs[i].eid,
                      m.devs[i].step, m.devs[i].bad, m.devs[i].data_answers,
                      m.devs[i].results_verified, m.devs[i].replays_refused,
                      m.devs[i].downloads_failed);
    print_message("iot: cycle errors %zu, package errors %zu\n", t.iot.cycle_errors,
                  t.iot.package_errors);
    print_message("eim: %d unknown polls, %d bad requests, %.1f s\n", m.polls_unknown,
                  m.bad_requests, (esim_mono_ms() - start) / 1000.0);
    assert_int_equal(m.done_devices, N_DEVICES);
    assert_int_equal(m.bad_requests, 0);
    assert_int_equal(t.iot.registered, N_DEVICES);
    assert_int_equal(t.iot.register_errors, 1); /* the 503, then the list again */
    /* every device: its association token registered, its certificate sent,
     * one verified result, one replay refused, one failed download */
    for (size_t i = 0; i < N_DEVICES; i++) {
        eim_dev *d = &m.devs[i];
        assert_int_equal(d->bad, 0);
        assert_int_equal(d->data_answers, 1);
        assert_int_equal(d->results_verified, 1);
        assert_int_equal(d->replays_refused, 1);
        assert_int_equal(d->downloads_failed, 1);
        /* polling every 150 ms, it kept its connection from cycle to cycle */
        assert_int_equal(d->connections, 1);
        X509_free(d->cert);
    }
    for (size_t i = 0; i < N_DEVICES; i++) {
        sim_euicc *e = sim_devsim_iot_euicc_at(s, i);
        const sim_eim_info *info = sim_euicc_eim_find(e, "esim-mdm");
        assert_non_null(info);
        assert_int_equal(info->counter, 1);
        assert_int_equal(info->association_token, sim_devsim_iot_token_at(s, i));
        assert_true(info->association_token >= 1);
    }
    assert_int_equal(t.iot.packages_ok, N_DEVICES);
    assert_int_equal(t.iot.packages_refused, N_DEVICES);
    assert_int_equal(t.iot.downloads_failed, N_DEVICES);
    assert_int_equal(t.iot.acknowledged, N_DEVICES);
    assert_int_equal(t.iot.cycle_errors, 0);
    sim_devsim_free(s);

    /* a second run from the same data directory keeps each eUICC's
     * association (no new AddInitialEim) */
    json_decref(m.registered);
    m.registered = json_pack("{s:[]}", "devices");
    assert_int_equal(sim_devsim_new(m.base, &cfg, &s, &err), ESIM_OK);
    for (size_t i = 0; i < N_DEVICES; i++)
        assert_int_equal(sim_euicc_eim_find(sim_devsim_iot_euicc_at(s, i), "esim-mdm")->counter, 1);
    sim_devsim_free(s);

    json_decref(m.registered);
    evhttp_free(m.http);
    event_base_free(m.base);
    esim_cert_clear(&eim);
    st_rmrf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iot_devices_poll_the_eim),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
