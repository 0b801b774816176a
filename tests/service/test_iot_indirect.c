/*
 * test_iot_indirect.c — the indirect profile download end to end: the real
 * service (its eIM relays ESipa BF39/BF3B/BF3A/BF3D to the SM-DP+ over
 * ES9+ HTTPS) on its own thread; the SM-DP+ simulator and devsim's IoT
 * devices, every one of them downloading through the eIM, on this thread's
 * loop. Two devices get their profile (by matching ID, and by default
 * SM-DP+ discovery by EID), installed and verified by a list of profiles,
 * the SM-DP+ told of the install by the relayed notification; a third is
 * refused by the SM-DP+ (unknown matching ID), then names an SM-DP+ nobody
 * answers at: each a failed package with the reason in words, and nothing
 * installed. The relay reaches only the SM-DP+ of a download the eIM
 * triggered and awaits, and only for that eUICC: any other address is
 * refused before a connection is made. The downloads again without
 * --eim-smdp-ca: the relay checks the SM-DP+ against the system's store
 * (here SSL_CERT_FILE naming the test CA, SSL_CERT_DIR an empty directory).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "service/svc_harness.h"
#include "sgp32/sgp32.h"
#include "tests/sim/sim_test.h"

#define N_IOT 3
#define SEED 1616

/* The SM-DP+'s CA is --eim-smdp-ca, or in the system's store. */
static bool system_store;

static struct {
    harness_env env;
    char *dir;
    char pki_dir[600];
    sim_pki *pki;
    struct event_base *base; /* the simulators' loop (this thread) */
    sim_smdp *smdp;
    sim_devsim *ds;
    test_service ts;
    char data[320];
    char smdp_name[64];
    char eid[N_IOT][ESIM_EID_LEN + 1];
} fx;

static void pump_on(struct event_base *base, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void pump(int ms)
{
    pump_on(fx.base, ms);
}

static json_t *get_json(const char *path)
{
    json_t *j = NULL;
    long code = api_call(fx.ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &j);
    if (code != 200) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Queues |fields| for device |i|; the package's UUID (free it). */
static char *enqueue(int i, const char *fields)
{
    char body[700];
    snprintf(body, sizeof body, "{\"eids\":[\"%s\"],%s}", fx.eid[i], fields);
    json_t *j = NULL;
    long code = api_call(fx.ts.url, TEST_TOKEN, "POST", "/v1/iot/packages", body, NULL, &j);
    if (code != 201)
        fail_msg("POST /v1/iot/packages: %ld for %s", code, body);
    char *uuid = strdup(json_string_value(json_object_get(j, "command_uuid")));
    json_decref(j);
    return uuid;
}

/* Pumps the simulators until the package is answered; its device entry. */
static json_t *wait_answered(const char *uuid)
{
    char path[200];
    snprintf(path, sizeof path, "/v1/iot/packages/%s", uuid);
    for (int k = 0; k < 600; k++) {
        json_t *j = get_json(path);
        json_t *d = json_array_get(json_object_get(j, "devices"), 0);
        const char *st = json_string_value(json_object_get(d, "state"));
        if (st && strcmp(st, "queued") != 0 && strcmp(st, "sent") != 0) {
            json_incref(d);
            json_decref(j);
            return d;
        }
        json_decref(j);
        pump(50);
    }
    fail_msg("package %s was never answered", uuid);
    return NULL;
}

static const char *words_of(const json_t *d)
{
    const char *w = json_string_value(json_object_get(json_object_get(d, "result"), "words"));
    return w ? w : "";
}

static void expect_state(const json_t *d, const char *want)
{
    const char *st = json_string_value(json_object_get(d, "state"));
    if (!st || strcmp(st, want) != 0)
        fail_msg("package %s, wanted %s: %s %s", st ? st : "?", want, words_of(d),
                 json_string_value(json_object_get(d, "error"))
                     ? json_string_value(json_object_get(d, "error"))
                     : "");
}

static int setup(void **state)
{
    (void)state;
    harness_env_setup(&fx.env);
    fx.dir = st_tempdir();
    snprintf(fx.pki_dir, sizeof fx.pki_dir, "%s/pki", fx.dir);
    if (sim_pki_open(fx.pki_dir, &fx.pki, NULL) != ESIM_OK)
        return -1;
    fx.base = event_base_new();
    esim_error err;
    sim_smdp_config sc = {.pki = fx.pki};
    if (sim_smdp_new(fx.base, &sc, &fx.smdp, &err) != ESIM_OK)
        return -1;
    snprintf(fx.smdp_name, sizeof fx.smdp_name, "127.0.0.1:%u", sim_smdp_port(fx.smdp));

    /* The service's eIM: the simulators' eIM key, their CI for the eUICC
     * certificates, their TLS CA for the SM-DP+ it relays to. */
    static char key[700], cert[700], ci[700], ca[700];
    snprintf(key, sizeof key, "%s/eim.key", fx.pki_dir);
    snprintf(cert, sizeof cert, "%s/eim.pem", fx.pki_dir);
    snprintf(ci, sizeof ci, "%s/ci.pem", fx.pki_dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", fx.pki_dir);
    esim_service_config cfg;
    harness_config(&fx.env, "iot-indirect", &cfg, fx.data);
    cfg.eim_key_path = key;
    cfg.eim_cert_path = cert;
    cfg.euicc_ci_path = ci;
    cfg.eim_smdp_ca_path = system_store ? NULL : ca;
    if (system_store && !harness_use_system_store(fx.dir, ca))
        return -1;
    harness_start(&fx.ts, &cfg);

    sim_devsim_config dc = {.server_url = fx.ts.url,
                            .pki_dir = fx.pki_dir,
                            .iot_devices = N_IOT,
                            .iot_poll_ms = 200,
                            .iot_indirect_share = 1.0,
                            .api_url = fx.ts.url,
                            .api_key = TEST_TOKEN,
                            .seed = SEED};
    if (sim_devsim_new(fx.base, &dc, &fx.ds, &err) != ESIM_OK) {
        fprintf(stderr, "devsim: %s\n", err.msg);
        return -1;
    }
    for (int i = 0; i < N_IOT; i++)
        snprintf(fx.eid[i], sizeof fx.eid[i], "%s",
                 sim_euicc_eid(sim_devsim_iot_euicc_at(fx.ds, (size_t)i)));
    /* Registered by devsim, then ready once the first poll brought the
     * eUICC's certificates. */
    for (int i = 0; i < N_IOT; i++) {
        char path[160];
        snprintf(path, sizeof path, "/v1/iot/devices/%s", fx.eid[i]);
        int k = 0;
        for (; k < 400; k++) {
            json_t *d = get_json(path);
            const char *st = json_string_value(json_object_get(d, "state"));
            bool ready = st && strcmp(st, "ready") == 0;
            json_decref(d);
            if (ready)
                break;
            pump(50);
        }
        if (k == 400) {
            fprintf(stderr, "IoT device %s never became ready\n", fx.eid[i]);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    harness_stop(&fx.ts);
    sim_devsim_free(fx.ds);
    sim_smdp_free(fx.smdp);
    event_base_free(fx.base);
    sim_pki_free(fx.pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    harness_use_system_store(NULL, NULL);
    harness_env_teardown(&fx.env);
    return 0;
}

static int setup_system_store(void **state)
{
    system_store = true;
    return setup(state);
}

static void test_indirect_downloads(void **state)
{
    (void)state;
    esim_error err;
    char iccid[N_IOT][SIM_ICCID_MAX + 1];
    for (int i = 0; i < N_IOT; i++)
        st_iccid(1600 + (unsigned)i, iccid[i]);
    assert_int_equal(sim_smdp_add_order(fx.smdp, fx.eid[0], iccid[0], "IOT-RELAY-0", true, &err),
                     ESIM_OK);
    assert_int_equal(sim_smdp_add_order(fx.smdp, fx.eid[1], iccid[1], NULL, true, &err), ESIM_OK);
    assert_int_equal(sim_smdp_add_order(fx.smdp, fx.eid[2], iccid[2], "IOT-RELAY-2", true, &err),
                     ESIM_OK);

    char f[300];
    char *uuid[N_IOT];
    snprintf(f, sizeof f, "\"download\":{\"activation_code\":\"1$%s$IOT-RELAY-0\"}", fx.smdp_name);
    uuid[0] = enqueue(0, f);
    snprintf(f, sizeof f, "\"download\":{\"activation_code\":\"1$%s\"}", fx.smdp_name);
    uuid[1] = enqueue(1, f);
    snprintf(f, sizeof f, "\"download\":{\"activation_code\":\"1$%s$NO-SUCH-ORDER\"}",
             fx.smdp_name);
    uuid[2] = enqueue(2, f);

    for (int i = 0; i < 2; i++) {
        json_t *d = wait_answered(uuid[i]);
        expect_state(d, "done");
        assert_non_null(strstr(words_of(d), iccid[i]));
        json_decref(d);
    }
    /* The SM-DP+ refused the third: the ESipa error (matchingIdRefused) and
     * the SM-DP+'s own words, through the eIM. */
    json_t *d = wait_answered(uuid[2]);
    expect_state(d, "failed");
    assert_non_null(strstr(words_of(d), "matchingIdRefused"));
    assert_non_null(strstr(words_of(d), "the eIM's relay: the SM-DP+ refused authenticateClient"));
    assert_non_null(strstr(words_of(d), "matching ID refused"));
    json_decref(d);
    for (int i = 0; i < N_IOT; i++)
        free(uuid[i]);

    /* An SM-DP+ nobody answers at: failed, saying so; the IPA goes on. */
    char *gone = enqueue(2, "\"download\":{\"activation_code\":\"1$127.0.0.1:1$IOT-RELAY-2\"}");
    d = wait_answered(gone);
    expect_state(d, "failed");
    assert_non_null(strstr(words_of(d), "initiateAuthentication: undefinedError (127)"));
    assert_non_null(strstr(words_of(d), "the SM-DP+ 127.0.0.1:1 could not be reached"));
    json_decref(d);
    free(gone);

    /* Verified by a list of profiles: the two are there (enabled now), the
     * third eUICC has none; the SM-DP+ heard of both installs. */
    for (int i = 0; i < N_IOT; i++) {
        if (i < 2)
            snprintf(f, sizeof f,
                     "\"operations\":[{\"op\":\"enable\",\"iccid\":\"%s\"},{\"op\":"
                     "\"list_profiles\"}]",
                     iccid[i]);
        else
            snprintf(f, sizeof f, "\"operations\":[{\"op\":\"list_profiles\"}]");
        char *u = enqueue(i, f);
        d = wait_answered(u);
        expect_state(d, "done");
        json_t *profiles = json_object_get(json_object_get(d, "result"), "profiles");
        if (i < 2) {
            assert_int_equal(json_array_size(profiles), 1);
            json_t *p = json_array_get(profiles, 0);
            assert_string_equal(json_string_value(json_object_get(p, "iccid")), iccid[i]);
            assert_string_equal(json_string_value(json_object_get(p, "state")), "enabled");
            assert_int_equal(sim_smdp_find_order(fx.smdp, iccid[i])->state, SIM_ORDER_INSTALLED);
        } else {
            assert_int_equal(json_array_size(profiles), 0);
            assert_int_equal(sim_smdp_find_order(fx.smdp, iccid[i])->state, SIM_ORDER_RELEASED);
        }
        json_decref(d);
        free(u);
    }
    /* Counted: four relayed calls per download (initiate, authenticate,
     * package, notification), and the two failures. */
    assert_true(api_metric(fx.ts.url, "esim_mdm_eim_relayed_total{outcome=\"ok\"}") >= 8);
    assert_true(api_metric(fx.ts.url, "esim_mdm_eim_relayed_total{outcome=\"failed\"}") >= 2);
}

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    esim_buf_append(arg, p, size * n);
    return size * n;
}

typedef struct {
    esim_buf body, reply;
    long status;
    bool done;
    pthread_mutex_t mu;
} esipa_post;

/* POSTs p->body to the ESipa endpoint (no cmocka checks: it may run on a
 * thread of its own). */
static void *post_run(void *arg)
{
    esipa_post *p = arg;
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "%s" SGP32_ESIPA_PATH, fx.ts.url);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: " SGP32_ESIPA_CONTENT_TYPE);
    h = curl_slist_append(h, "X-Admin-Protocol: " SGP32_ADMIN_PROTOCOL);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, p->body.data);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)p->body.len);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &p->reply);
    long status = -1;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    pthread_mutex_lock(&p->mu);
    p->status = status;
    p->done = true;
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* POSTs one ESipa message; its DER answer decoded (NULL: not 200 DER).
 * With |pumped| not NULL, that loop runs meanwhile (the SM-DP+ the eIM
 * relays to is on it). */
static long last_status; /* of the last esipa_do */

static EsipaMessageFromEimToIpa_t *esipa_do(const EsipaMessageFromIpaToEim_t *m,
                                            struct event_base *pumped)
{
    esipa_post p = {.status = -1};
    pthread_mutex_init(&p.mu, NULL);
    assert_int_equal(sgp32_encode(&asn_DEF_EsipaMessageFromIpaToEim, m, &p.body, NULL), ESIM_OK);
    if (pumped) {
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, post_run, &p), 0);
        for (;;) {
            pthread_mutex_lock(&p.mu);
            bool done = p.done;
            pthread_mutex_unlock(&p.mu);
            if (done)
                break;
            pump_on(pumped, 20);
        }
        pthread_join(t, NULL);
    } else {
        post_run(&p);
    }
    pthread_mutex_destroy(&p.mu);
    assert_true(p.status > 0);
    last_status = p.status;
    void *out = NULL;
    if (p.status == 200)
        assert_int_equal(
            sgp32_decode(&asn_DEF_EsipaMessageFromEimToIpa, p.reply.data, p.reply.len, &out, NULL),
            ESIM_OK);
    esim_buf_free(&p.body);
    esim_buf_free(&p.reply);
    return out;
}

static EsipaMessageFromEimToIpa_t *esipa(const EsipaMessageFromIpaToEim_t *m)
{
    return esipa_do(m, NULL);
}

/* Requests the eIM cannot relay get that step's ESipa error and reach no
 * SM-DP+: a later step of a session it never relayed, an initiation
 * without an SM-DP+ address or with one that is not a host name. */
static void test_relay_refusals(void **state)
{
    (void)state;
    long failed = api_metric(fx.ts.url, "esim_mdm_eim_relayed_total{outcome=\"failed\"}");
    EsipaMessageFromIpaToEim_t m = {.present =
                                        EsipaMessageFromIpaToEim_PR_authenticateClientRequestEsipa};
    AuthenticateClientRequestEsipa_t *a = &m.choice.authenticateClientRequestEsipa;
    assert_int_equal(OCTET_STRING_fromBuf(&a->transactionId, "0123456789abcdef", 16), 0);
    assert_int_equal(
        OCTET_STRING_fromBuf((OCTET_STRING_t *)&a->authenticateServerResponse, "\xa0\x00", 2), 0);
    EsipaMessageFromEimToIpa_t *r = esipa(&m);
    assert_non_null(r);
    assert_int_equal(r->present, EsipaMessageFromEimToIpa_PR_authenticateClientResponseEsipa);
    assert_int_equal(r->choice.authenticateClientResponseEsipa.choice.authenticateClientErrorEsipa,
                     10); /* invalidTransactionId */
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, r);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &m);

    static const char *const addresses[] = {NULL, "evil.example/x?y", ""};
    for (size_t k = 0; k < 3; k++) {
        EsipaMessageFromIpaToEim_t q = {
            .present = EsipaMessageFromIpaToEim_PR_initiateAuthenticationRequestEsipa};
        InitiateAuthenticationRequestEsipa_t *i = &q.choice.initiateAuthenticationRequestEsipa;
        assert_int_equal(OCTET_STRING_fromBuf(&i->euiccChallenge, "0123456789abcdef", 16), 0);
        if (addresses[k])
            i->smdpAddress = OCTET_STRING_new_fromBuf(&asn_DEF_UTF8String, addresses[k], -1);
        r = esipa(&q);
        assert_non_null(r);
        assert_int_equal(r->present,
                         EsipaMessageFromEimToIpa_PR_initiateAuthenticationResponseEsipa);
        assert_int_equal(r->choice.initiateAuthenticationResponseEsipa.present,
                         InitiateAuthenticationResponseEsipa_PR_initiateAuthenticationErrorEsipa);
        assert_int_equal(
            r->choice.initiateAuthenticationResponseEsipa.choice.initiateAuthenticationErrorEsipa,
            1); /* invalidDpAddress */
        sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, r);
        ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &q);
    }
    assert_int_equal(api_metric(fx.ts.url, "esim_mdm_eim_relayed_total{outcome=\"failed\"}"),
                     failed + 4);
}

/* A listening socket on a loopback port: an SM-DP+ address nobody
 * triggered a download from; the eIM must never connect to it. */
static int bare_listener(unsigned *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &n), 0);
    assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* Whether anybody connected to |fd| (the kernel queues a connection even
 * before accept). */
static bool anybody_connected(int fd)
{
    int c = accept(fd, NULL, NULL);
    if (c < 0) {
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
        return false;
    }
    close(c);
    return true;
}

/* BF39 naming |smdp|: 0 and the transactionId when the SM-DP+ answered,
 * else the ESipa error code. */
static long initiate(const char *smdp, struct event_base *pumped, uint8_t txid[16],
                     size_t *txid_len)
{
    static const uint8_t svn[3] = {2, 2, 0};
    EsipaMessageFromIpaToEim_t q = {
        .present = EsipaMessageFromIpaToEim_PR_initiateAuthenticationRequestEsipa};
    InitiateAuthenticationRequestEsipa_t *i = &q.choice.initiateAuthenticationRequestEsipa;
    assert_int_equal(OCTET_STRING_fromBuf(&i->euiccChallenge, "0123456789abcdef", 16), 0);
    i->smdpAddress = OCTET_STRING_new_fromBuf(&asn_DEF_UTF8String, smdp, -1);
    i->euiccInfo1 = calloc(1, sizeof *i->euiccInfo1);
    assert_non_null(i->euiccInfo1);
    assert_int_equal(OCTET_STRING_fromBuf(&i->euiccInfo1->svn, (const char *)svn, 3), 0);
    EsipaMessageFromEimToIpa_t *r = esipa_do(&q, pumped);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &q);
    assert_non_null(r);
    assert_int_equal(r->present, EsipaMessageFromEimToIpa_PR_initiateAuthenticationResponseEsipa);
    InitiateAuthenticationResponseEsipa_t *a = &r->choice.initiateAuthenticationResponseEsipa;
    long code = 0;
    if (a->present == InitiateAuthenticationResponseEsipa_PR_initiateAuthenticationOkEsipa) {
        TransactionId_t *t = a->choice.initiateAuthenticationOkEsipa.transactionId;
        assert_non_null(t);
        assert_true(t->size >= 1 && t->size <= 16);
        memcpy(txid, t->buf, (size_t)t->size);
        *txid_len = (size_t)t->size;
    } else {
        code = a->choice.initiateAuthenticationErrorEsipa;
    }
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, r);
    return code;
}

/* BF3B for session |txid| with an AuthenticateServerResponse carrying the
 * certificates of devsim's eUICC |k| (the eIM reads the EID there; the
 * signature is the SM-DP+'s to check): 0 when relayed and answered Ok, else
 * the ESipa error code. */
static long authenticate_as(size_t k, const char *smdp, struct event_base *pumped,
                            const uint8_t *txid, size_t txid_len)
{
    static const uint8_t tac[] = {0x80, 0x04, 0x35, 0x33, 0x20, 0x11}, caps[] = {0xa1, 0x00};
    static const uint8_t sig[64] = {0};
    AuthenticateServerResponse_t a = {.present =
                                          AuthenticateServerResponse_PR_authenticateResponseOk};
    AuthenticateResponseOk_t *ok = &a.choice.authenticateResponseOk;
    EuiccSigned1_t *es = &ok->euiccSigned1;
    es->ctxParams1.present = Es9CtxParams1_PR_ctxParamsForCommonAuthentication;
    DeviceInfo_t *di = &es->ctxParams1.choice.ctxParamsForCommonAuthentication.deviceInfo;
    OpaqueTlv_t *t1 = calloc(1, sizeof *t1), *t2 = calloc(1, sizeof *t2);
    assert_true(t1 && t2);
    assert_int_equal(OCTET_STRING_fromBuf((OCTET_STRING_t *)t1, (const char *)tac, sizeof tac), 0);
    assert_int_equal(OCTET_STRING_fromBuf((OCTET_STRING_t *)t2, (const char *)caps, sizeof caps),
                     0);
    assert_int_equal(ASN_SEQUENCE_ADD(&di->list, t1), 0);
    assert_int_equal(ASN_SEQUENCE_ADD(&di->list, t2), 0);
    assert_int_equal(OCTET_STRING_fromBuf(&es->transactionId, (const char *)txid, (int)txid_len),
                     0);
    assert_int_equal(OCTET_STRING_fromBuf(&es->serverAddress, smdp, -1), 0);
    assert_int_equal(OCTET_STRING_fromBuf(&es->serverChallenge, "0123456789abcdef", 16), 0);
    assert_int_equal(OCTET_STRING_fromBuf(&ok->euiccSignature1, (const char *)sig, 64), 0);
    const esim_buf *ecert, *eum;
    void *c1 = NULL, *c2 = NULL;
    assert_int_equal(sim_euicc_cert_der(sim_devsim_iot_euicc_at(fx.ds, k), &ecert, &eum, NULL),
                     ESIM_OK);
    assert_int_equal(sgp32_decode(&asn_DEF_Certificate, ecert->data, ecert->len, &c1, NULL),
                     ESIM_OK);
    assert_int_equal(sgp32_decode(&asn_DEF_Certificate, eum->data, eum->len, &c2, NULL), ESIM_OK);
    ok->euiccCertificate = *(Certificate_t *)c1;
    ok->eumCertificate = *(Certificate_t *)c2;
    free(c1);
    free(c2);
    esim_buf der = {0};
    const uint8_t *v;
    size_t n;
    assert_int_equal(sgp32_encode(&asn_DEF_AuthenticateServerResponse, &a, &der, NULL), ESIM_OK);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_AuthenticateServerResponse, &a);
    assert_int_equal(sgp32_tlv_unwrap(0xBF38, der.data, der.len, &v, &n, NULL), ESIM_OK);
    EsipaMessageFromIpaToEim_t m = {.present =
                                        EsipaMessageFromIpaToEim_PR_authenticateClientRequestEsipa};
    AuthenticateClientRequestEsipa_t *q = &m.choice.authenticateClientRequestEsipa;
    assert_int_equal(OCTET_STRING_fromBuf(&q->transactionId, (const char *)txid, (int)txid_len), 0);
    assert_int_equal(OCTET_STRING_fromBuf((OCTET_STRING_t *)&q->authenticateServerResponse,
                                          (const char *)v, (int)n),
                     0);
    esim_buf_free(&der);
    EsipaMessageFromEimToIpa_t *r = esipa_do(&m, pumped);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &m);
    assert_non_null(r);
    assert_int_equal(r->present, EsipaMessageFromEimToIpa_PR_authenticateClientResponseEsipa);
    long code = r->choice.authenticateClientResponseEsipa.present ==
                        AuthenticateClientResponseEsipa_PR_authenticateClientErrorEsipa
                    ? r->choice.authenticateClientResponseEsipa.choice.authenticateClientErrorEsipa
                    : 0;
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, r);
    return code;
}

/* The IPA polls for device |i| (as devsim would): the download trigger
 * queued for it is delivered, signed. */
static void deliver(size_t i)
{
    uint8_t b[16];
    assert_int_equal(sgp32_eid_to_bytes(fx.eid[i], b, NULL), ESIM_OK);
    EsipaMessageFromIpaToEim_t m = {.present = EsipaMessageFromIpaToEim_PR_getEimPackageRequest};
    assert_int_equal(
        OCTET_STRING_fromBuf(&m.choice.getEimPackageRequest.eidValue, (const char *)b, 16), 0);
    EsipaMessageFromEimToIpa_t *r = esipa(&m);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &m);
    assert_non_null(r);
    assert_int_equal(r->present, EsipaMessageFromEimToIpa_PR_getEimPackageResponse);
    assert_int_equal(r->choice.getEimPackageResponse.present,
                     GetEimPackageResponse_PR_profileDownloadTriggerRequest);
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, r);
}

/* The relay reaches only the SM-DP+ of a download the eIM triggered and
 * awaits (host without regard to case, port exactly; 443 when none), and
 * only for the eUICC it triggered it for; anything else is refused before
 * any connection: smdpAddressMismatch (50) for the address, eidMismatch (7)
 * for another eUICC. */
static void test_relay_only_to_triggered(void **state)
{
    (void)state;
    unsigned port;
    int lfd = bare_listener(&port);
    char bare[64], upper[64];
    snprintf(bare, sizeof bare, "127.0.0.1:%u", port);
    long refused =
        api_metric(fx.ts.url, "esim_mdm_eim_relay_refused_total{reason=\"smdp_address\"}");
    long eid_refused = api_metric(fx.ts.url, "esim_mdm_eim_relay_refused_total{reason=\"eid\"}");
    uint8_t txid[16];
    size_t txid_len = 0;

    /* No trigger names the listener; the first test's triggers named the
     * SM-DP+ simulator, but their results came: all refused, nobody
     * contacted. */
    const char *no[] = {bare, "127.0.0.1", "localhost", fx.smdp_name};
    for (size_t k = 0; k < sizeof no / sizeof *no; k++)
        assert_int_equal(initiate(no[k], NULL, txid, &txid_len), 50); /* smdpAddressMismatch */
    assert_false(anybody_connected(lfd));
    assert_int_equal(
        api_metric(fx.ts.url, "esim_mdm_eim_relay_refused_total{reason=\"smdp_address\"}"),
        refused + 4);

    /* A second SM-DP+ on a loop of its own (devsim stays still: its IPA
     * would take the trigger below and finish it). A trigger for device 0
     * naming it, delivered and not yet answered: that SM-DP+ (and that one
     * only) is relayed to. */
    struct event_base *quiet = event_base_new();
    sim_smdp *smdp2 = NULL;
    sim_smdp_config sc = {.pki = fx.pki};
    assert_int_equal(sim_smdp_new(quiet, &sc, &smdp2, NULL), ESIM_OK);
    char name2[64], f[300];
    snprintf(name2, sizeof name2, "127.0.0.1:%u", sim_smdp_port(smdp2));
    snprintf(f, sizeof f, "\"download\":{\"activation_code\":\"1$%s$IOT-ALLOW-0\"}", name2);
    char *uuid = enqueue(0, f);
    deliver(0);
    assert_int_equal(initiate(bare, NULL, txid, &txid_len), 50);
    assert_false(anybody_connected(lfd));
    snprintf(upper, sizeof upper, "LOCALHOST:%u", sim_smdp_port(smdp2));
    assert_int_equal(initiate(upper, NULL, txid, &txid_len), 50); /* another host */
    assert_int_equal(initiate(name2, quiet, txid, &txid_len), 0);

    /* The session goes on only for the eUICC the trigger is for: device
     * 1's certificate is refused by the eIM itself (eidMismatch; the
     * SM-DP+, asked, would have refused the made-up signature). */
    assert_int_equal(authenticate_as(1, name2, quiet, txid, txid_len), 7); /* eidMismatch */
    assert_int_equal(api_metric(fx.ts.url, "esim_mdm_eim_relay_refused_total{reason=\"eid\"}"),
                     eid_refused + 1);
    /* Device 0's is relayed: the SM-DP+ refuses the made-up signature. */
    assert_int_equal(authenticate_as(0, name2, quiet, txid, txid_len),
                     5); /* euiccSignatureInvalid */
    assert_int_equal(api_metric(fx.ts.url, "esim_mdm_eim_relay_refused_total{reason=\"eid\"}"),
                     eid_refused + 1);
    assert_false(anybody_connected(lfd));

    /* The IPA reports the failed download in a HandleNotificationEsipa
     * (SGP.32 v1.0 lets it carry a ProvideEimPackageResult): taken as a
     * ProvideEimPackageResult is, answered 204 (HandleNotification has no
     * ESipa answer). */
    uint8_t b[16];
    assert_int_equal(sgp32_eid_to_bytes(fx.eid[0], b, NULL), ESIM_OK);
    EsipaMessageFromIpaToEim_t hn = {.present =
                                         EsipaMessageFromIpaToEim_PR_handleNotificationEsipa};
    hn.choice.handleNotificationEsipa.present = HandleNotificationEsipa_PR_provideEimPackageResult;
    ProvideEimPackageResult_t *pr =
        &hn.choice.handleNotificationEsipa.choice.provideEimPackageResult;
    pr->present = ProvideEimPackageResult_PR_profileDownloadTriggerResult;
    ProfileDownloadTriggerResult_t *tr = &pr->choice.profileDownloadTriggerResult;
    tr->eimTransactionId = OCTET_STRING_new_fromBuf(&asn_DEF_TransactionId, (const char *)b, 16);
    assert_non_null(tr->eimTransactionId);
    tr->profileDownloadTriggerResultData.present =
        ProfileDownloadTriggerResult__profileDownloadTriggerResultData_PR_profileDownloadError;
    tr->profileDownloadTriggerResultData.choice.profileDownloadError.errorResponse =
        OCTET_STRING_new_fromBuf(&asn_DEF_OCTET_STRING, "indirect download: refused", -1);
    EsipaMessageFromEimToIpa_t *none = esipa(&hn);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &hn);
    assert_null(none);
    assert_int_equal(last_status, 204);
    json_t *d = wait_answered(uuid);
    expect_state(d, "failed");
    assert_non_null(strstr(words_of(d), "the IPA could not download the profile: indirect "
                                        "download: refused"));
    json_decref(d);
    sim_smdp_free(smdp2);
    event_base_free(quiet);
    close(lfd);
    free(uuid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_indirect_downloads),
        cmocka_unit_test(test_relay_refusals),
        cmocka_unit_test(test_relay_only_to_triggered),
    };
    const struct CMUnitTest system[] = {
        cmocka_unit_test(test_indirect_downloads),
    };
    int failed = cmocka_run_group_tests_name("eim_smdp_ca", tests, setup, teardown);
    failed += cmocka_run_group_tests_name("system_store", system, setup_system_store, teardown);
    return failed;
}
