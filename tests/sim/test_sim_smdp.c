/*
 * test_sim_smdp.c — the SM-DP+ simulator and the LPA over real HTTPS on
 * loopback: a full download and install notification, consume-once, the
 * order errors (no order, wrong EID, not released), mutual authentication
 * attacks (forged signature, foreign CI on either side, replayed challenge),
 * the eUICC certificate checks (dates, names, issuer's signature,
 * extensions: what X509_verify_cert checked before the SM-DP+ read the
 * certificate in place),
 * the admin endpoint, CSV manifests and order persistence.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>

#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/der.h"
#include "sim/cert_view.h"
#include "tests/sim/sim_test.h"

typedef struct {
    char *dir;
    sim_pki *pki, *other_pki; /* other_pki: a second, unrelated test CI */
    struct event_base *base;
    sim_http *http;
    sim_smdp *smdp;
    char url[128];
    char es9[160];
} fixture;

static fixture fx;

static int setup_all(void **state)
{
    (void)state;
    fx.dir = st_tempdir();
    char d[512];
    esim_error err;
    snprintf(d, sizeof d, "%s/pki", fx.dir);
    if (sim_pki_open(d, &fx.pki, &err) != ESIM_OK)
        return fprintf(stderr, "%s\n", err.msg), -1;
    snprintf(d, sizeof d, "%s/other-pki", fx.dir);
    if (sim_pki_open(d, &fx.other_pki, &err) != ESIM_OK)
        return fprintf(stderr, "%s\n", err.msg), -1;
    return 0;
}

static int teardown_all(void **state)
{
    (void)state;
    sim_pki_free(fx.pki);
    sim_pki_free(fx.other_pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    fx.base = event_base_new();
    esim_error err;
    sim_smdp_config cfg = {.pki = fx.pki, .admin_token = "t0ken"};
    if (sim_smdp_new(fx.base, &cfg, &fx.smdp, &err) != ESIM_OK)
        return fprintf(stderr, "%s\n", err.msg), -1;
    if (sim_http_new(fx.base, &fx.http, &err) != ESIM_OK)
        return -1;
    snprintf(fx.url, sizeof fx.url, "%s", sim_smdp_url(fx.smdp));
    snprintf(fx.es9, sizeof fx.es9, "%s/gsma/rsp2/es9plus/", fx.url);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sim_http_free(fx.http);
    sim_smdp_free(fx.smdp);
    event_base_free(fx.base);
    fx.http = NULL;
    fx.smdp = NULL;
    return 0;
}

static sim_euicc *euicc(const sim_pki *pki, unsigned n)
{
    char eid[33];
    st_eid(n, eid);
    sim_euicc *e = NULL;
    assert_int_equal(sim_euicc_new(pki, eid, &e, NULL), ESIM_OK);
    return e;
}

static void order(const sim_euicc *e, unsigned n, const char *mid, bool released)
{
    char iccid[21];
    st_iccid(n, iccid);
    esim_error err;
    assert_int_equal(sim_smdp_add_order(fx.smdp, sim_euicc_eid(e), iccid, mid, released, &err),
                     ESIM_OK);
}

typedef struct {
    bool done;
    sim_download_result r;
} dl_wait;

static void dl_cb(void *arg, const sim_download_result *r)
{
    dl_wait *w = arg;
    w->r = *r;
    w->done = true;
}

/* A download by |e|'s device, on its link |link| (NULL: one for this download only). */
static sim_download_result download_on(sim_euicc *e, sim_lpa_link **link, const char *mid,
                                       const char *ca)
{
    dl_wait w = {0};
    esim_error err;
    assert_int_equal(sim_lpa_download(fx.http, e, link, fx.url, ca, mid, dl_cb, &w, &err), ESIM_OK);
    st_run_until(fx.base, &w.done);
    assert_true(w.done);
    return w.r;
}

static sim_download_result download(sim_euicc *e, const char *mid, const char *ca)
{
    return download_on(e, NULL, mid, ca);
}

typedef struct {
    bool done;
    size_t still;
} nt_wait;

static void nt_cb(void *arg, size_t still)
{
    nt_wait *w = arg;
    w->still = still;
    w->done = true;
}

static size_t send_notifications_on(sim_euicc *e, sim_lpa_link **link)
{
    nt_wait w = {0};
    assert_int_equal(
        sim_lpa_send_notifications(fx.http, e, link, sim_pki_ca_file(fx.pki), nt_cb, &w, NULL),
        ESIM_OK);
    st_run_until(fx.base, &w.done);
    return w.still;
}

static size_t send_notifications(sim_euicc *e)
{
    return send_notifications_on(e, NULL);
}

static void test_download_install_once(void **state)
{
    (void)state;
    sim_euicc *e = euicc(fx.pki, 100);
    order(e, 100, NULL, true);
    char iccid[21];
    st_iccid(100, iccid);
    /* The eUICC checks the SM-DP+'s certificate against its CI itself. */
    size_t checks = sim_cert_cache_chain_checks(fx.pki->server_certs);
    sim_download_result r = download(e, NULL, sim_pki_ca_file(fx.pki));
    assert_int_equal(r.err, ESIM_OK);
    assert_string_equal(r.iccid, iccid);
    assert_int_equal(sim_cert_cache_chain_checks(fx.pki->server_certs), checks + 1);
    const sim_profile *p = sim_euicc_find(e, iccid);
    assert_non_null(p);
    assert_int_equal(p->state, SIM_PROFILE_DISABLED);
    assert_int_equal(p->profile_class, SIM_CLASS_OPERATIONAL);
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->state, SIM_ORDER_DOWNLOADED);
    assert_int_equal(sim_euicc_enable(e, iccid), SIM_RES_OK);

    /* install + enable notifications reach the SM-DP+ and are forgotten. */
    assert_int_equal(sim_euicc_notification_count(e), 2);
    assert_int_equal(send_notifications(e), 0);
    assert_int_equal(sim_euicc_notification_count(e), 0);
    const sim_order *o = sim_smdp_find_order(fx.smdp, iccid);
    assert_int_equal(o->state, SIM_ORDER_INSTALLED);
    assert_int_equal(o->downloads, 1);
    assert_int_equal(o->installs, 1);

    /* Consume once: the same eUICC asking again is refused 8.2/3.7. */
    assert_int_equal(sim_euicc_delete(e, iccid), SIM_RES_PROFILE_NOT_IN_DISABLED_STATE);
    r = download(e, NULL, sim_pki_ca_file(fx.pki));
    assert_int_equal(r.err, ESIM_EAUTH);
    assert_string_equal(r.subject_code, "8.2");
    assert_string_equal(r.reason_code, "3.7");
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->downloads, 1);
    sim_euicc_free(e);
}

static void test_order_errors(void **state)
{
    (void)state;
    sim_euicc *a = euicc(fx.pki, 200), *b = euicc(fx.pki, 201), *c = euicc(fx.pki, 202);
    order(a, 200, "AAAAA-BBBBB-CCCCC-DDDDD", true);
    order(c, 202, NULL, false);

    sim_download_result r = download(b, NULL, sim_pki_ca_file(fx.pki));
    assert_int_equal(r.err, ESIM_EAUTH);
    assert_string_equal(r.subject_code, "8.1.1");
    assert_string_equal(r.reason_code, "2.2"); /* nothing ordered for b */

    r = download(b, "AAAAA-BBBBB-CCCCC-DDDDD", sim_pki_ca_file(fx.pki));
    assert_string_equal(r.subject_code, "8.1.1");
    assert_string_equal(r.reason_code, "3.8"); /* a's order, b's EID */
    assert_int_equal(sim_euicc_profile_count(b), 0);

    r = download(c, NULL, sim_pki_ca_file(fx.pki));
    assert_string_equal(r.subject_code, "8.2");
    assert_string_equal(r.reason_code, "1.2"); /* not released yet */
    char iccid[21];
    st_iccid(202, iccid);
    esim_error err;
    assert_int_equal(sim_smdp_release_order(fx.smdp, iccid, &err), ESIM_OK);
    assert_int_equal(sim_smdp_release_order(fx.smdp, iccid, &err), ESIM_ESTATE);
    r = download(c, NULL, sim_pki_ca_file(fx.pki));
    assert_int_equal(r.err, ESIM_OK);

    /* a checks the SM-DP+'s certificate itself, although b and c just
     * checked the same one: no eUICC takes another's verdict. */
    size_t checks = sim_cert_cache_chain_checks(fx.pki->server_certs);
    r = download(a, "AAAAA-BBBBB-CCCCC-DDDDD", sim_pki_ca_file(fx.pki));
    assert_int_equal(sim_cert_cache_chain_checks(fx.pki->server_certs), checks + 1);
    assert_int_equal(r.err, ESIM_OK);
    sim_euicc_free(a);
    sim_euicc_free(b);
    sim_euicc_free(c);
}

static void test_foreign_ci(void **state)
{
    (void)state;
    /* An eUICC whose EUM comes from another CI: the SM-DP+ refuses it. */
    sim_euicc *e = euicc(fx.pki, 300);
    assert_int_equal(sim_euicc_reissue(e, &fx.other_pki->eum, fx.other_pki->eum.x509, NULL),
                     ESIM_OK);
    order(e, 300, NULL, true);
    sim_download_result r = download(e, NULL, sim_pki_ca_file(fx.pki));
    assert_int_equal(r.err, ESIM_EAUTH);
    assert_string_equal(r.subject_code, "8.1.2");
    assert_string_equal(r.reason_code, "6.1");
    char iccid[21];
    st_iccid(300, iccid);
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->state, SIM_ORDER_RELEASED);
    sim_euicc_free(e);

    /* An SM-DP+ whose DPauth comes from another CI: the eUICC refuses it. */
    sim_smdp *rogue = NULL;
    sim_smdp_config cfg = {.pki = fx.other_pki};
    assert_int_equal(sim_smdp_new(fx.base, &cfg, &rogue, NULL), ESIM_OK);
    sim_euicc *good = euicc(fx.pki, 301);
    char iccid2[21];
    st_iccid(301, iccid2);
    assert_int_equal(sim_smdp_add_order(rogue, sim_euicc_eid(good), iccid2, NULL, true, NULL),
                     ESIM_OK);
    dl_wait w = {0};
    assert_int_equal(sim_lpa_download(fx.http, good, NULL, sim_smdp_url(rogue),
                                      sim_pki_ca_file(fx.other_pki), NULL, dl_cb, &w, NULL),
                     ESIM_OK);
    st_run_until(fx.base, &w.done);
    assert_int_equal(w.r.err, ESIM_ECRYPTO);
    assert_non_null(strstr(w.r.message, "CI"));
    assert_int_equal(sim_euicc_profile_count(good), 0);
    assert_int_equal(sim_smdp_find_order(rogue, iccid2)->state, SIM_ORDER_RELEASED);
    /* The LPA cancelled the session it refused to continue. */
    for (int i = 0; i < 500 && sim_smdp_session_count(rogue) > 0; i++) {
        event_base_loop(fx.base, EVLOOP_NONBLOCK);
        usleep(10000);
    }
    assert_int_equal(sim_smdp_session_count(rogue), 0);
    sim_smdp_free(rogue);
    sim_euicc_free(good);
}

/* ---- hand-driven protocol for the attacks ---- */

static json_t *es9(const char *fn, json_t *body, long *status)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", fx.es9, fn);
    static const char *const h[] = {"Content-Type: application/json",
                                    "X-Admin-Protocol: gsma/rsp/v2.2.0"};
    json_t *r =
        st_request(fx.base, fx.http, "POST", url, sim_pki_ca_file(fx.pki), body, h, 2, status);
    json_decref(body);
    return r;
}

static const char *status_of(json_t *r, char *buf, size_t n)
{
    json_t *st = json_object_get(json_object_get(r, "header"), "functionExecutionStatus");
    json_t *scd = json_object_get(st, "statusCodeData");
    if (!scd)
        snprintf(buf, n, "%s", sim_json_str(st, "status") ? sim_json_str(st, "status") : "?");
    else
        snprintf(buf, n, "%s/%s", sim_json_str(scd, "subjectCode"),
                 sim_json_str(scd, "reasonCode"));
    return buf;
}

static json_t *initiate(char chal_b64[64])
{
    unsigned char chal[16];
    esim_random_bytes(chal, 16);
    json_t *b = json_object();
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", sim_smdp_port(fx.smdp));
    json_object_set_new(b, "smdpAddress", json_string(addr));
    sim_json_set_b64(b, "euiccChallenge", chal, 16);
    snprintf(chal_b64, 64, "%s", sim_json_str(b, "euiccChallenge"));
    long st;
    json_t *r = es9("initiateAuthentication", b, &st);
    assert_int_equal(st, 200);
    return r;
}

/* The authenticateClient body for session |txid| signing |server_chal|,
 * signed by |signer| while presenting |presenter|'s certificate. */
static json_t *auth_body(const char *txid, const char *server_chal, sim_euicc *signer,
                         sim_euicc *presenter)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%u", sim_smdp_port(fx.smdp));
    json_t *signed1 = json_pack("{s:s, s:s, s:s, s:{}}", "transactionId", txid, "serverAddress",
                                addr, "serverChallenge", server_chal, "ctxParams1");
    esim_buf raw = {0}, c = {0}, eum = {0};
    sim_json_dump(signed1, &raw);
    json_decref(signed1);
    unsigned char sig[64];
    assert_int_equal(sim_euicc_sign(signer, raw.data, raw.len, sig, NULL), ESIM_OK);
    sim_euicc_cert_b64(presenter, &c, &eum);
    json_t *asr = json_pack("{s:s, s:s}", "euiccCertificate", (const char *)c.data,
                            "eumCertificate", (const char *)eum.data);
    sim_json_set_b64(asr, "euiccSigned1", raw.data, raw.len);
    sim_json_set_b64(asr, "euiccSignature1", sig, 64);
    esim_buf_free(&raw);
    esim_buf_free(&c);
    esim_buf_free(&eum);
    return json_pack("{s:s, s:o}", "transactionId", txid, "authenticateServerResponse", asr);
}

static const char *server_challenge(json_t *init, char out[64])
{
    esim_buf raw = {0};
    assert_int_equal(sim_json_b64(init, "serverSigned1", &raw, NULL), ESIM_OK);
    json_t *s1 = json_loadb((const char *)raw.data, raw.len, 0, NULL);
    snprintf(out, 64, "%s", sim_json_str(s1, "serverChallenge"));
    json_decref(s1);
    esim_buf_free(&raw);
    return out;
}

static void test_forged_signature(void **state)
{
    (void)state;
    sim_euicc *victim = euicc(fx.pki, 400), *attacker = euicc(fx.pki, 401);
    order(victim, 400, NULL, true);
    char chal[64], sc[64], buf[64];
    json_t *init = initiate(chal);
    char txid[64];
    snprintf(txid, sizeof txid, "%s", sim_json_str(init, "transactionId"));
    /* The attacker presents the victim's certificate but can only sign with its own key. */
    json_t *r = es9("authenticateClient",
                    auth_body(txid, server_challenge(init, sc), attacker, victim), NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.1/6.1");
    json_decref(r);
    json_decref(init);
    char iccid[21];
    st_iccid(400, iccid);
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->state, SIM_ORDER_RELEASED);

    /* And the EID in a body is never believed: only the certificate counts. */
    init = initiate(chal);
    snprintf(txid, sizeof txid, "%s", sim_json_str(init, "transactionId"));
    json_t *body = auth_body(txid, server_challenge(init, sc), attacker, attacker);
    json_object_set_new(body, "eid", json_string(sim_euicc_eid(victim)));
    r = es9("authenticateClient", body, NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.1.1/2.2");
    json_decref(r);
    json_decref(init);
    sim_euicc_free(victim);
    sim_euicc_free(attacker);
}

/* The eUICC keys kept ready to verify (core/p256.h tables): one made per
 * key for its four signatures (authenticateClient, getBoundProfilePackage,
 * the install and enable notifications); a forged signature is refused
 * while the victim's key is kept; with more keys than places the least
 * recently used is made again, and every answer stays right. */
static void test_euicc_key_tables(void **state)
{
    (void)state;
    sim_smdp_free(fx.smdp);
    sim_smdp_config cfg = {.pki = fx.pki, .key_tables = 4}; /* one set of four */
    assert_int_equal(sim_smdp_new(fx.base, &cfg, &fx.smdp, NULL), ESIM_OK);
    snprintf(fx.url, sizeof fx.url, "%s", sim_smdp_url(fx.smdp));
    snprintf(fx.es9, sizeof fx.es9, "%s/gsma/rsp2/es9plus/", fx.url);
    const char *ca = sim_pki_ca_file(fx.pki);
    sim_euicc *e[6];
    char iccid[21], buf[64];
    for (unsigned i = 0; i < 6; i++) {
        e[i] = euicc(fx.pki, 700 + i);
        order(e[i], 700 + i, NULL, true);
    }
    assert_int_equal(sim_smdp_key_tables_made(fx.smdp), 0);
    sim_download_result r = download(e[0], NULL, ca);
    assert_int_equal(r.err, ESIM_OK);
    assert_int_equal(sim_euicc_enable(e[0], r.iccid), SIM_RES_OK);
    assert_int_equal(send_notifications(e[0]), 0);
    st_iccid(700, iccid);
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->state, SIM_ORDER_INSTALLED);
    assert_int_equal(sim_smdp_key_tables_made(fx.smdp), 1);

    /* e[1] presents e[0]'s certificate and signs with its own key. */
    char chal[64], sc[64], txid[64];
    json_t *init = initiate(chal);
    snprintf(txid, sizeof txid, "%s", sim_json_str(init, "transactionId"));
    json_t *resp =
        es9("authenticateClient", auth_body(txid, server_challenge(init, sc), e[1], e[0]), NULL);
    assert_string_equal(status_of(resp, buf, sizeof buf), "8.1/6.1");
    json_decref(resp);
    json_decref(init);
    assert_int_equal(sim_smdp_key_tables_made(fx.smdp), 1);

    /* Five more keys through four places: e[0]'s goes, and is made again. */
    for (unsigned i = 1; i < 6; i++) {
        r = download(e[i], NULL, ca);
        assert_int_equal(r.err, ESIM_OK);
        assert_int_equal(send_notifications(e[i]), 0);
        st_iccid(700 + i, iccid);
        assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->state, SIM_ORDER_INSTALLED);
    }
    assert_int_equal(sim_smdp_key_tables_made(fx.smdp), 6);
    order(e[0], 710, "KEYS-AGAIN", true);
    r = download(e[0], "KEYS-AGAIN", ca);
    assert_int_equal(r.err, ESIM_OK);
    assert_int_equal(send_notifications(e[0]), 0);
    st_iccid(710, iccid);
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->state, SIM_ORDER_INSTALLED);
    assert_int_equal(sim_smdp_key_tables_made(fx.smdp), 7);
    for (unsigned i = 0; i < 6; i++)
        sim_euicc_free(e[i]);
}

/* ---- eUICC certificates made here with OpenSSL, signed by the EUM ---- */

typedef enum {
    CERT_OK,
    CERT_EXPIRED,
    CERT_NOT_YET_VALID,
    CERT_OTHER_ISSUER_NAME,
    CERT_OTHER_EUM_KEY,
    CERT_CRITICAL_UNKNOWN,
    CERT_KU_CERT_SIGN_ONLY,
    CERT_BAD_SIGNATURE,
    CERT_CASES
} cert_case;

static EVP_PKEY *read_key(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", fx.dir, name);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

static X509 *read_cert(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", fx.dir, name);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(x);
    return x;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    assert_non_null(e);
    assert_int_equal(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* The base64 DER of an eUICC certificate for EID |eid| as |c| wants it. */
static void make_euicc_cert(cert_case c, const char *eid, esim_buf *b64)
{
    EVP_PKEY *eum_key = read_key(c == CERT_OTHER_EUM_KEY ? "other-pki/eum.key" : "pki/eum.key");
    X509 *eum = read_cert("pki/eum.pem"), *ci = read_cert("pki/ci.pem");
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    assert_non_null(k);
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
    X509_set_issuer_name(x, X509_get_subject_name(c == CERT_OTHER_ISSUER_NAME ? ci : eum));
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"test eUICC", -1, -1,
                               0);
    X509_NAME_add_entry_by_NID(n, NID_serialNumber, MBSTRING_ASC, (const unsigned char *)eid, -1,
                               -1, 0);
    X509_gmtime_adj(X509_getm_notBefore(x), c == CERT_NOT_YET_VALID ? 86400 : -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), c == CERT_EXPIRED ? -60 : 86400 * 365L);
    X509_set_pubkey(x, k);
    add_ext(x, eum, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(x, eum, NID_key_usage,
            c == CERT_KU_CERT_SIGN_ONLY ? "critical,keyCertSign" : "critical,digitalSignature");
    add_ext(x, eum, NID_subject_key_identifier, "hash");
    if (c == CERT_CRITICAL_UNKNOWN)
        add_ext(x, eum, NID_inhibit_any_policy, "critical,0");
    assert_true(X509_sign(x, eum_key, EVP_sha256()) > 0);
    esim_buf der = {0};
    assert_int_equal(sim_x509_to_der(x, &der), ESIM_OK);
    if (c == CERT_BAD_SIGNATURE)
        der.data[der.len - 3] ^= 0x01; /* inside s */
    if (c == CERT_OK) {
        /* The in-place reading agrees with OpenSSL's. */
        sim_cert_view v;
        assert_true(sim_cert_view_parse(der.data, der.len, &v));
        assert_int_equal(v.serial_len, strlen(eid));
        assert_memory_equal(v.serial, eid, v.serial_len);
        assert_true(v.has_key_usage && (v.key_usage & SIM_KU_DIGITAL_SIGNATURE));
        assert_true(v.has_basic_constraints && !v.is_ca);
        assert_int_equal(ASN1_TIME_cmp_time_t(X509_get0_notBefore(x), (time_t)v.not_before), 0);
        assert_int_equal(ASN1_TIME_cmp_time_t(X509_get0_notAfter(x), (time_t)v.not_after), 0);
        for (size_t cut = 0; cut < der.len; cut++) /* every truncation is refused */
            assert_false(sim_cert_view_parse(der.data, cut, &v));
    }
    esim_buf_reset(b64);
    assert_int_equal(esim_base64_encode(der.data, der.len, b64), ESIM_OK);
    esim_buf_free(&der);
    X509_free(x);
    X509_free(eum);
    X509_free(ci);
    EVP_PKEY_free(k);
    EVP_PKEY_free(eum_key);
}

static void test_euicc_certificate_checks(void **state)
{
    (void)state;
    sim_euicc *e = euicc(fx.pki, 450);
    order(e, 450, NULL, true);
    esim_buf genuine = {0}, eum = {0}, cert = {0};
    sim_euicc_cert_b64(e, &genuine, &eum);
    for (int c = 0; c < CERT_CASES; c++) {
        make_euicc_cert((cert_case)c, sim_euicc_eid(e), &cert);
        char chal[64], sc[64], buf[64], txid[64];
        json_t *init = initiate(chal);
        snprintf(txid, sizeof txid, "%s", sim_json_str(init, "transactionId"));
        /* Signed by the genuine eUICC's key: the certificate's own key is
         * another, so a certificate that passes fails at the signature. */
        json_t *body = auth_body(txid, server_challenge(init, sc), e, e);
        json_object_set_new(json_object_get(body, "authenticateServerResponse"), "euiccCertificate",
                            json_string((const char *)cert.data));
        json_t *r = es9("authenticateClient", body, NULL);
        assert_string_equal(status_of(r, buf, sizeof buf), c == CERT_OK ? "8.1/6.1" : "8.1.3/6.1");
        json_decref(r);
        json_decref(init);
    }
    /* The genuine one still works, twice (the second from the cache). */
    for (int i = 0; i < 2; i++) {
        char chal[64], sc[64], buf[64], txid[64];
        json_t *init = initiate(chal);
        snprintf(txid, sizeof txid, "%s", sim_json_str(init, "transactionId"));
        json_t *r =
            es9("authenticateClient", auth_body(txid, server_challenge(init, sc), e, e), NULL);
        assert_string_equal(status_of(r, buf, sizeof buf), "Executed-Success");
        json_decref(r);
        json_decref(init);
    }
    esim_buf_free(&genuine);
    esim_buf_free(&eum);
    esim_buf_free(&cert);
    sim_euicc_free(e);
}

static void test_replayed_challenge(void **state)
{
    (void)state;
    sim_euicc *e = euicc(fx.pki, 500);
    order(e, 500, NULL, true);
    char chal[64], sc_a[64], sc_b[64], buf[64], tx_a[64], tx_b[64];
    json_t *a = initiate(chal), *b = initiate(chal);
    snprintf(tx_a, sizeof tx_a, "%s", sim_json_str(a, "transactionId"));
    snprintf(tx_b, sizeof tx_b, "%s", sim_json_str(b, "transactionId"));
    server_challenge(a, sc_a);
    server_challenge(b, sc_b);
    assert_string_not_equal(sc_a, sc_b);

    /* A genuine signature over session A's challenge, replayed into B. */
    json_t *body = auth_body(tx_a, sc_a, e, e);
    json_object_set_new(body, "transactionId", json_string(tx_b));
    json_t *r = es9("authenticateClient", body, NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.1/6.1");
    json_decref(r);

    /* Session A itself accepts it once, and a replay of the same message is refused. */
    r = es9("authenticateClient", auth_body(tx_a, sc_a, e, e), NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "Executed-Success");
    json_decref(r);
    r = es9("authenticateClient", auth_body(tx_a, sc_a, e, e), NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.10.1/3.9");
    json_decref(r);

    /* The failed attempt ended session B: the eUICC must start over. */
    r = es9("authenticateClient", auth_body(tx_b, sc_b, e, e), NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.10.1/3.9");
    json_decref(r);

    /* cancelSession ends a session too. */
    char tx_c[64], sc_c[64];
    json_t *c = initiate(chal);
    snprintf(tx_c, sizeof tx_c, "%s", sim_json_str(c, "transactionId"));
    server_challenge(c, sc_c);
    r = es9("cancelSession", json_pack("{s:s}", "transactionId", tx_c), NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "Executed-Success");
    json_decref(r);
    r = es9("authenticateClient", auth_body(tx_c, sc_c, e, e), NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.10.1/3.9");
    json_decref(r);
    json_decref(c);

    /* Garbage is refused with a status, not a crash. */
    long st;
    r = es9("initiateAuthentication", json_pack("{s:s}", "euiccChallenge", "!!"), &st);
    assert_int_equal(st, 200);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.1/2.1");
    json_decref(r);
    r = es9("getBoundProfilePackage", json_pack("{s:s}", "transactionId", "nope"), NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.10.1/3.9");
    json_decref(r);
    json_decref(a);
    json_decref(b);
    sim_euicc_free(e);
}

static void test_notification_from_other_eid(void **state)
{
    (void)state;
    sim_euicc *owner = euicc(fx.pki, 600), *other = euicc(fx.pki, 601);
    order(owner, 600, NULL, true);
    assert_int_equal(download(owner, NULL, sim_pki_ca_file(fx.pki)).err, ESIM_OK);
    char iccid[21];
    st_iccid(600, iccid);
    /* Another eUICC claims to have installed the owner's profile. */
    sim_profile p = {0};
    snprintf(p.iccid, sizeof p.iccid, "%s", iccid);
    p.profile_class = SIM_CLASS_OPERATIONAL;
    snprintf(p.smdp_address, sizeof p.smdp_address, "127.0.0.1:%u", sim_smdp_port(fx.smdp));
    sim_result res;
    assert_int_equal(sim_euicc_install(other, &p, &res, NULL), ESIM_OK);
    assert_int_equal(send_notifications(other), 0); /* confirmed, but ignored */
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->state, SIM_ORDER_DOWNLOADED);
    assert_int_equal(send_notifications(owner), 0);
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->state, SIM_ORDER_INSTALLED);
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid)->installs, 1);
    sim_euicc_free(owner);
    sim_euicc_free(other);
}

static void test_install_failure_reported(void **state)
{
    (void)state;
    sim_euicc *e = euicc(fx.pki, 900);
    order(e, 900, NULL, true);
    /* The eUICC already holds a profile with the ordered ICCID. */
    sim_profile p = {0};
    st_iccid(900, p.iccid);
    p.profile_class = SIM_CLASS_OPERATIONAL;
    sim_result res;
    assert_int_equal(sim_euicc_install(e, &p, &res, NULL), ESIM_OK);
    sim_download_result r = download(e, NULL, sim_pki_ca_file(fx.pki));
    assert_int_equal(r.err, ESIM_ESTATE);
    assert_non_null(strstr(r.message, "iccidAlreadyExists"));
    const sim_order *o = sim_smdp_find_order(fx.smdp, p.iccid);
    for (int i = 0; i < 500 && o->state != SIM_ORDER_ERROR; i++) {
        event_base_loop(fx.base, EVLOOP_NONBLOCK);
        usleep(10000);
    }
    assert_int_equal(o->state, SIM_ORDER_ERROR);
    assert_non_null(strstr(o->error, "iccidAlreadyExists"));
    assert_int_equal(sim_smdp_session_count(fx.smdp), 0);
    sim_euicc_free(e);
}

/* Garbage in every function: answered (Failed, 4xx), never a crash, and the
 * server still serves a real download afterwards. */
static void test_garbage(void **state)
{
    (void)state;
    const char *fns[] = {"initiateAuthentication", "authenticateClient", "getBoundProfilePackage",
                         "handleNotification",     "cancelSession",      "nope"};
    const char *bodies[] = {"",
                            "not json",
                            "[]",
                            "{}",
                            "{\"transactionId\":5}",
                            "{\"euiccChallenge\":123,\"smdpAddress\":[]}",
                            "{\"transactionId\":\"00\",\"authenticateServerResponse\":\"x\"}",
                            "{\"prepareDownloadResponse\":{},\"transactionId\":null}",
                            "{\"pendingNotification\":\"!!!\",\"euiccCertificate\":\"AAAA\"}",
                            "{\"authenticateServerResponse\":{\"euiccSigned1\":\"e30=\"}}"};
    static const char *const h[] = {"Content-Type: application/json"};
    for (size_t f = 0; f < sizeof fns / sizeof fns[0]; f++)
        for (size_t b = 0; b < sizeof bodies / sizeof bodies[0]; b++) {
            char url[256];
            snprintf(url, sizeof url, "%s%s", fx.es9, fns[f]);
            st_reply w = {0};
            sim_http_request req = {.method = "POST",
                                    .url = url,
                                    .headers = h,
                                    .n_headers = 1,
                                    .body = bodies[b],
                                    .body_len = strlen(bodies[b]),
                                    .ca_file = sim_pki_ca_file(fx.pki)};
            assert_int_equal(sim_http_send(fx.http, &req, st_reply_cb, &w, NULL), ESIM_OK);
            st_run_until(fx.base, &w.done);
            assert_int_equal(w.err, ESIM_OK);
            assert_true(w.status == 200 || w.status == 404);
            if (w.status == 200 && f < 5) {
                json_t *j = json_loadb((const char *)w.body.data, w.body.len, 0, NULL);
                char buf[64];
                assert_string_not_equal(status_of(j, buf, sizeof buf), "Executed-Success");
                json_decref(j);
            }
            esim_buf_free(&w.body);
        }
    /* Too big, and the wrong method. */
    char *big = malloc(300 * 1024);
    memset(big, 'a', 300 * 1024);
    char url[256];
    snprintf(url, sizeof url, "%sinitiateAuthentication", fx.es9);
    st_reply w = {0};
    sim_http_request req = {.method = "POST",
                            .url = url,
                            .body = big,
                            .body_len = 300 * 1024,
                            .ca_file = sim_pki_ca_file(fx.pki)};
    assert_int_equal(sim_http_send(fx.http, &req, st_reply_cb, &w, NULL), ESIM_OK);
    st_run_until(fx.base, &w.done);
    assert_true(w.err != ESIM_OK || w.status == 413);
    esim_buf_free(&w.body);
    free(big);
    long st;
    json_t *r =
        st_request(fx.base, fx.http, "GET", url, sim_pki_ca_file(fx.pki), NULL, NULL, 0, &st);
    assert_int_equal(st, 405);
    json_decref(r);
    assert_int_equal(sim_smdp_session_count(fx.smdp), 0);

    sim_euicc *e = euicc(fx.pki, 950);
    order(e, 950, NULL, true);
    assert_int_equal(download(e, NULL, sim_pki_ca_file(fx.pki)).err, ESIM_OK);
    sim_euicc_free(e);
}

static void test_admin_and_csv(void **state)
{
    (void)state;
    char eid[33], iccid[21], url[200];
    st_eid(700, eid);
    st_iccid(700, iccid);
    snprintf(url, sizeof url, "%s/admin/orders", fx.url);
    static const char *const auth[] = {"Authorization: Bearer t0ken"};
    long st;
    json_t *body = json_pack("{s:s, s:s, s:b}", "eid", eid, "iccid", iccid, "released", 0);
    json_t *r =
        st_request(fx.base, fx.http, "POST", url, sim_pki_ca_file(fx.pki), body, auth, 1, &st);
    assert_int_equal(st, 201);
    assert_string_equal(sim_json_str(r, "state"), "Available");
    json_decref(r);
    r = st_request(fx.base, fx.http, "POST", url, sim_pki_ca_file(fx.pki), body, auth, 1, &st);
    assert_int_equal(st, 409);
    json_decref(r);
    json_decref(body);
    body = json_pack("{s:s, s:s}", "eid", "123", "iccid", iccid);
    r = st_request(fx.base, fx.http, "POST", url, sim_pki_ca_file(fx.pki), body, auth, 1, &st);
    assert_int_equal(st, 400);
    assert_non_null(strstr(sim_json_str(r, "error"), "EID"));
    json_decref(r);
    json_decref(body);
    char rel[220];
    snprintf(rel, sizeof rel, "%s/release", url);
    body = json_pack("{s:s}", "iccid", iccid);
    r = st_request(fx.base, fx.http, "POST", rel, sim_pki_ca_file(fx.pki), body, auth, 1, &st);
    assert_int_equal(st, 200);
    assert_string_equal(sim_json_str(r, "state"), "Released");
    json_decref(r);
    json_decref(body);

    /* CSV: all or nothing. */
    char path[600];
    snprintf(path, sizeof path, "%s/orders.csv", fx.dir);
    char e1[33], e2[33], i1[21], i2[21], csv[512];
    st_eid(701, e1);
    st_eid(702, e2);
    st_iccid(701, i1);
    st_iccid(702, i2);
    snprintf(csv, sizeof csv, "eid,iccid,matching_id\n%s,%s\n%s,%s,MATCH-1\n%s,12345\n", e1, i1, e2,
             i2, e1);
    assert_int_equal(esim_write_file_atomic(path, csv, strlen(csv), 0644, NULL), ESIM_OK);
    size_t added = 99;
    esim_error err;
    size_t before = sim_smdp_order_count(fx.smdp);
    assert_int_equal(sim_smdp_load_csv(fx.smdp, path, &added, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "line 4"));
    assert_int_equal(sim_smdp_order_count(fx.smdp), before);
    snprintf(csv, sizeof csv, "eid,iccid,matching_id\n%s,%s\n\n%s,%s,MATCH-1\n", e1, i1, e2, i2);
    assert_int_equal(esim_write_file_atomic(path, csv, strlen(csv), 0644, NULL), ESIM_OK);
    assert_int_equal(sim_smdp_load_csv(fx.smdp, path, &added, &err), ESIM_OK);
    assert_int_equal(added, 2);
    assert_int_equal(sim_smdp_find_order(fx.smdp, i2)->state, SIM_ORDER_RELEASED);
    assert_string_equal(sim_smdp_find_order(fx.smdp, i2)->matching_id, "MATCH-1");

    r = st_request(fx.base, fx.http, "GET", url, sim_pki_ca_file(fx.pki), NULL, auth, 1, &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_integer_value(json_object_get(r, "total")), 3);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "counts"), "Released")),
                     3);
    assert_int_equal(json_array_size(json_object_get(r, "orders")), 3);
    json_decref(r);
    char summary[240];
    snprintf(summary, sizeof summary, "%s?summary=1", url);
    r = st_request(fx.base, fx.http, "GET", summary, sim_pki_ca_file(fx.pki), NULL, auth, 1, &st);
    assert_int_equal(json_integer_value(json_object_get(r, "total")), 3);
    assert_int_equal(json_array_size(json_object_get(r, "orders")), 0);
    json_decref(r);

    /* ?eid=: that EID's orders only, every one of them; counts over all. */
    char one[260], i3[21];
    st_iccid(703, i3);
    body = json_pack("{s:s, s:s}", "eid", e1, "iccid", i3);
    r = st_request(fx.base, fx.http, "POST", url, sim_pki_ca_file(fx.pki), body, auth, 1, &st);
    assert_int_equal(st, 201);
    json_decref(r);
    json_decref(body);
    snprintf(one, sizeof one, "%s?eid=%s", url, e2);
    r = st_request(fx.base, fx.http, "GET", one, sim_pki_ca_file(fx.pki), NULL, auth, 1, &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_integer_value(json_object_get(r, "total")), 4);
    assert_int_equal(json_array_size(json_object_get(r, "orders")), 1);
    assert_string_equal(sim_json_str(json_array_get(json_object_get(r, "orders"), 0), "iccid"), i2);
    json_decref(r);
    snprintf(one, sizeof one, "%s?eid=%s", url, e1);
    r = st_request(fx.base, fx.http, "GET", one, sim_pki_ca_file(fx.pki), NULL, auth, 1, &st);
    assert_int_equal(st, 200);
    json_t *two = json_object_get(r, "orders");
    assert_int_equal(json_array_size(two), 2);
    assert_string_equal(sim_json_str(json_array_get(two, 0), "eid"), e1);
    assert_string_equal(sim_json_str(json_array_get(two, 1), "eid"), e1);
    json_decref(r);
    char none[33];
    st_eid(799, none);
    snprintf(one, sizeof one, "%s?eid=%s", url, none);
    r = st_request(fx.base, fx.http, "GET", one, sim_pki_ca_file(fx.pki), NULL, auth, 1, &st);
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(r, "orders")), 0);
    json_decref(r);
    snprintf(one, sizeof one, "%s?eid=123", url);
    r = st_request(fx.base, fx.http, "GET", one, sim_pki_ca_file(fx.pki), NULL, auth, 1, &st);
    assert_int_equal(st, 400);
    assert_non_null(strstr(sim_json_str(r, "error"), "EID"));
    json_decref(r);
}

static void test_admin_token_and_persistence(void **state)
{
    (void)state;
    char data[600];
    snprintf(data, sizeof data, "%s/smdp-data", fx.dir);
    sim_smdp *s = NULL;
    sim_smdp_config cfg = {.pki = fx.pki, .data_dir = data, .admin_token = "sekret"};
    esim_error err;
    assert_int_equal(sim_smdp_new(fx.base, &cfg, &s, &err), ESIM_OK);
    char url[200];
    snprintf(url, sizeof url, "%s/admin/orders", sim_smdp_url(s));
    long st;
    json_t *r =
        st_request(fx.base, fx.http, "GET", url, sim_pki_ca_file(fx.pki), NULL, NULL, 0, &st);
    assert_int_equal(st, 401);
    json_decref(r);
    /* Wrong, a prefix, longer, another scheme, empty: all refused. */
    const char *wrong[] = {"Authorization: Bearer sekreT",  "Authorization: Bearer sekre",
                           "Authorization: Bearer sekrets", "Authorization: Basic sekret",
                           "Authorization: Bearer ",        "Authorization: sekret"};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        r = st_request(fx.base, fx.http, "GET", url, sim_pki_ca_file(fx.pki), NULL, &wrong[i], 1,
                       &st);
        assert_int_equal(st, 401);
        json_decref(r);
    }
    static const char *const auth[] = {"Authorization: Bearer sekret"};
    r = st_request(fx.base, fx.http, "GET", url, sim_pki_ca_file(fx.pki), NULL, auth, 1, &st);
    assert_int_equal(st, 200);
    json_decref(r);

    sim_euicc *e = euicc(fx.pki, 800);
    char iccid[21];
    st_iccid(800, iccid);
    assert_int_equal(sim_smdp_add_order(s, sim_euicc_eid(e), iccid, NULL, true, &err), ESIM_OK);
    dl_wait w = {0};
    assert_int_equal(sim_lpa_download(fx.http, e, NULL, sim_smdp_url(s), sim_pki_ca_file(fx.pki),
                                      NULL, dl_cb, &w, NULL),
                     ESIM_OK);
    st_run_until(fx.base, &w.done);
    assert_int_equal(w.r.err, ESIM_OK);
    cfg.port = sim_smdp_port(s); /* where the eUICC's notifications go */
    sim_smdp_free(s);            /* flushes */

    s = NULL;
    assert_int_equal(sim_smdp_new(fx.base, &cfg, &s, &err), ESIM_OK);
    assert_int_equal(sim_smdp_order_count(s), 1);
    assert_int_equal(sim_smdp_find_order(s, iccid)->state, SIM_ORDER_DOWNLOADED);
    assert_int_equal(sim_smdp_find_order(s, iccid)->downloads, 1);
    /* Still consumed after the restart: the eUICC's install notification,
     * pending since the download, goes first, and the order is Installed. */
    w.done = false;
    assert_int_equal(sim_lpa_download(fx.http, e, NULL, sim_smdp_url(s), sim_pki_ca_file(fx.pki),
                                      NULL, dl_cb, &w, NULL),
                     ESIM_OK);
    st_run_until(fx.base, &w.done);
    assert_string_equal(w.r.reason_code, "3.7");
    assert_int_equal(sim_smdp_find_order(s, iccid)->state, SIM_ORDER_INSTALLED);
    assert_int_equal(sim_smdp_find_order(s, iccid)->downloads, 1);
    sim_smdp_free(s);
    sim_euicc_free(e);
}

/* Issue 10 item 8: without a configured token the admin endpoints are
 * closed (403), not open to anyone who can reach the port. */
static void test_admin_needs_a_token(void **state)
{
    (void)state;
    sim_smdp *s = NULL;
    sim_smdp_config cfg = {.pki = fx.pki};
    esim_error err;
    assert_int_equal(sim_smdp_new(fx.base, &cfg, &s, &err), ESIM_OK);
    char url[200];
    snprintf(url, sizeof url, "%s/admin/orders", sim_smdp_url(s));
    long st;
    static const char *const auth[] = {"Authorization: Bearer "};
    json_t *r =
        st_request(fx.base, fx.http, "GET", url, sim_pki_ca_file(fx.pki), NULL, NULL, 0, &st);
    assert_int_equal(st, 403);
    assert_non_null(strstr(sim_json_str(r, "error"), "admin token"));
    json_decref(r);
    json_t *body = json_pack("{s:s}", "iccid", "89000000000000000001");
    r = st_request(fx.base, fx.http, "POST", url, sim_pki_ca_file(fx.pki), body, auth, 1, &st);
    assert_int_equal(st, 403);
    json_decref(r);
    json_decref(body);
    assert_int_equal(sim_smdp_order_count(s), 0);
    sim_smdp_free(s);
}

/* Issue 10 item 8: authenticateClient without authenticateServerResponse
 * gets a clear Failed answer (it used to get none, and the client hung);
 * the session it named is over. */
static void test_authenticate_without_response(void **state)
{
    (void)state;
    char chal[64], buf[64];
    json_t *r = initiate(chal);
    char txid[64];
    snprintf(txid, sizeof txid, "%s", sim_json_str(r, "transactionId"));
    json_decref(r);
    assert_int_equal(sim_smdp_session_count(fx.smdp), 1);
    long st;
    r = es9("authenticateClient", json_pack("{s:s}", "transactionId", txid), &st);
    assert_int_equal(st, 200);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.1/2.2");
    json_decref(r);
    r = es9("authenticateClient",
            json_pack("{s:s, s:[]}", "transactionId", txid, "authenticateServerResponse"), &st);
    assert_int_equal(st, 200);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.10.1/3.9"); /* the session ended */
    json_decref(r);
    assert_int_equal(sim_smdp_session_count(fx.smdp), 0);
}

/* Issue 10 item 8: sessions are capped by a small bound and expire, so
 * abandoned sessions cannot pile up. */
/* One TLS request to the SM-DP+ on a connection of its own with a session
 * of its own (a full handshake): its transport result. */
static esim_err tls_get(const char *ca, sim_tls_session **sess)
{
    sim_http_conn *conn = NULL;
    assert_int_equal(sim_http_conn_new(&conn, NULL), ESIM_OK);
    st_reply w = {0};
    char url[200];
    snprintf(url, sizeof url, "%s/admin/orders", fx.url);
    sim_http_request req = {.method = "GET", .url = url, .ca_file = ca, .conn = conn, .tls = sess};
    assert_int_equal(sim_http_send(fx.http, &req, st_reply_cb, &w, NULL), ESIM_OK);
    st_run_until(fx.base, &w.done);
    assert_true(w.done);
    esim_buf_free(&w.body);
    sim_http_conn_free(conn);
    return w.err;
}

/* Whether |t| holds a session, and one without the server's certificate. */
static bool kept_without_peer(const sim_tls_session *t)
{
    size_t len = 0;
    const unsigned char *der = sim_tls_session_der(t, &len);
    SSL_SESSION *s = der ? d2i_SSL_SESSION(NULL, &der, (long)len) : NULL;
    bool ok = s && SSL_SESSION_get0_peer(s) == NULL;
    SSL_SESSION_free(s);
    return ok;
}

/* Every full handshake verifies the server's chain itself (X509_verify_cert):
 * N devices' first connections, N verifications, none taken from another
 * device; a resumed handshake has no chain to verify. The same chain under
 * another trust anchor is refused. The SM-DP+ gives one session ticket per
 * handshake, full or resumed. */
static void test_tls_chain_verified_per_handshake(void **state)
{
    (void)state;
    enum { N = 3 };
    sim_tls_session *dev[N] = {0}, *c = NULL, *d = NULL;
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(tls_get(sim_pki_ca_file(fx.pki), &dev[i]), ESIM_OK);
        sim_http_tls_stats t = sim_http_get_tls_stats(fx.http);
        assert_int_equal(t.full, i + 1);
        assert_int_equal(t.chains_verified, i + 1);
        assert_int_equal(t.tickets, i + 1); /* one per handshake (OpenSSL's default: two) */
    }
    /* What a device keeps of its session is its DER without the server's
     * certificate (issue 17: a parsed copy per device was most of the
     * simulator's memory), and that resumes. */
    assert_true(kept_without_peer(dev[1]));
    /* Resumed: no certificate at all, nothing to verify. */
    assert_int_equal(tls_get(sim_pki_ca_file(fx.pki), &dev[1]), ESIM_OK);
    sim_http_tls_stats t = sim_http_get_tls_stats(fx.http);
    assert_int_equal(t.full, N);
    assert_int_equal(t.resumed, 1);
    assert_int_equal(t.chains_verified, N);
    assert_int_equal(t.tickets, N + 1); /* a resumed handshake's one new ticket too */
    assert_true(kept_without_peer(dev[1]));
    /* Another CA: verified, and refused. */
    assert_int_equal(tls_get(sim_pki_ca_file(fx.other_pki), &c), ESIM_ECRYPTO);
    assert_int_equal(sim_http_get_tls_stats(fx.http).chains_verified, N + 1);
    /* And the right one still works after the refusal, verified again. */
    assert_int_equal(tls_get(sim_pki_ca_file(fx.pki), &d), ESIM_OK);
    assert_int_equal(sim_http_get_tls_stats(fx.http).chains_verified, N + 2);
    for (size_t i = 0; i < N; i++)
        sim_tls_session_free(dev[i]);
    sim_tls_session_free(c);
    sim_tls_session_free(d);
}

/* An SM-DP+ serving |cert| with the PKI's server key (its public key
 * unchanged, so the handshake's own signature is good), and a full
 * handshake with it under the PKI's CA. */
static esim_err tls_get_served(X509 *cert)
{
    X509 *good = fx.pki->server.x509;
    fx.pki->server.x509 = cert;
    sim_smdp *s = NULL;
    esim_error err;
    sim_smdp_config cfg = {.pki = fx.pki, .admin_token = "t0ken"};
    esim_err made = sim_smdp_new(fx.base, &cfg, &s, &err);
    fx.pki->server.x509 = good;
    assert_int_equal(made, ESIM_OK);
    sim_http_conn *conn = NULL;
    assert_int_equal(sim_http_conn_new(&conn, NULL), ESIM_OK);
    sim_tls_session *sess = NULL;
    st_reply w = {0};
    char url[200];
    snprintf(url, sizeof url, "%s/admin/orders", sim_smdp_url(s));
    sim_http_request req = {.method = "GET",
                            .url = url,
                            .ca_file = sim_pki_ca_file(fx.pki),
                            .conn = conn,
                            .tls = &sess};
    assert_int_equal(sim_http_send(fx.http, &req, st_reply_cb, &w, NULL), ESIM_OK);
    st_run_until(fx.base, &w.done);
    assert_true(w.done);
    esim_buf_free(&w.body);
    sim_http_conn_free(conn);
    sim_tls_session_free(sess);
    sim_smdp_free(s);
    return w.err;
}

/* The CA's signature over the server's certificate is checked in every
 * full handshake (the simulator's own step of X509_verify_cert, through the
 * CA key's table): the certificate with one bit of its serial number
 * changed (the TBSCertificate the CA signed is not the one sent), or one
 * bit of the signature's s, is refused; the certificate as issued is taken,
 * before and after, each a verification of its own. */
static void test_tls_chain_signature_checked(void **state)
{
    (void)state;
    unsigned char *der = NULL;
    int len = i2d_X509(fx.pki->server.x509, &der);
    assert_true(len > 0);
    esim_der all = {der, der + len}, cert, tbs;
    const unsigned char *serial = NULL;
    size_t serial_len = 0;
    assert_true(esim_der_enter(&all, 0x30, &cert));
    assert_true(esim_der_enter(&cert, 0x30, &tbs));
    assert_true(esim_der_take(&tbs, 0xa0, NULL, NULL, NULL, NULL));
    assert_true(esim_der_take(&tbs, 0x02, NULL, NULL, &serial, &serial_len));
    size_t at[] = {(size_t)(serial + serial_len - 1 - der), (size_t)len - 1};
    assert_int_equal(tls_get_served(fx.pki->server.x509), ESIM_OK);
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        der[at[i]] ^= 0x01;
        const unsigned char *p = der;
        X509 *bad = d2i_X509(NULL, &p, len);
        der[at[i]] ^= 0x01;
        assert_non_null(bad);
        assert_int_equal(tls_get_served(bad), ESIM_ECRYPTO);
        X509_free(bad);
    }
    assert_int_equal(tls_get_served(fx.pki->server.x509), ESIM_OK);
    OPENSSL_free(der);
    sim_http_tls_stats t = sim_http_get_tls_stats(fx.http);
    assert_int_equal(t.chains_verified, 4);
    assert_int_equal(t.full, 2); /* the refused ones never completed */
}

/* Issue 17: each device's ES9+ traffic is its own. Two devices' downloads
 * are two full handshakes with the SM-DP+ (the second does not resume the
 * first device's session), each verifying the chain; a download's four
 * requests and the install notification after it share the device's one
 * connection; the device's second download resumes its own session. */
static void test_es9_connections_per_device(void **state)
{
    (void)state;
    sim_euicc *a = euicc(fx.pki, 120), *b = euicc(fx.pki, 121);
    sim_lpa_link *la = NULL, *lb = NULL;
    order(a, 120, NULL, true);
    order(b, 121, NULL, true);
    size_t full, resumed;
    assert_int_equal(download_on(a, &la, NULL, sim_pki_ca_file(fx.pki)).err, ESIM_OK);
    assert_non_null(la);
    sim_smdp_tls_handshakes(fx.smdp, &full, &resumed);
    assert_int_equal(full, 1);
    assert_int_equal(resumed, 0);
    assert_int_equal(send_notifications_on(a, &la), 0); /* on the download's connection */
    sim_smdp_tls_handshakes(fx.smdp, &full, &resumed);
    assert_int_equal(full + resumed, 1);
    assert_int_equal(download_on(b, &lb, NULL, sim_pki_ca_file(fx.pki)).err, ESIM_OK);
    assert_int_equal(send_notifications_on(b, &lb), 0);
    sim_smdp_tls_handshakes(fx.smdp, &full, &resumed);
    assert_int_equal(full, 2);
    assert_int_equal(resumed, 0);
    assert_int_equal(sim_http_get_tls_stats(fx.http).chains_verified, 2);
    /* a's second download: its connection was closed after its
     * notifications; a new one resumes a's own session. */
    order(a, 122, NULL, true);
    assert_int_equal(download_on(a, &la, NULL, sim_pki_ca_file(fx.pki)).err, ESIM_OK);
    assert_int_equal(send_notifications_on(a, &la), 0);
    sim_smdp_tls_handshakes(fx.smdp, &full, &resumed);
    assert_int_equal(full, 2);
    assert_int_equal(resumed, 1);
    assert_int_equal(sim_http_get_tls_stats(fx.http).chains_verified, 2);
    /* A wiped device forgets its session: a full handshake again. */
    sim_lpa_link_forget(lb);
    order(b, 123, NULL, true);
    assert_int_equal(download_on(b, &lb, NULL, sim_pki_ca_file(fx.pki)).err, ESIM_OK);
    sim_smdp_tls_handshakes(fx.smdp, &full, &resumed);
    assert_int_equal(full, 3);
    assert_int_equal(resumed, 1);
    /* b's connection is held for its notifications: freeing the link
     * closes it. */
    sim_lpa_link_free(la);
    sim_lpa_link_free(lb);
    sim_euicc_free(a);
    sim_euicc_free(b);
}

static void test_session_cap_and_expiry(void **state)
{
    (void)state;
    sim_smdp_free(fx.smdp);
    sim_smdp_config cfg = {.pki = fx.pki, .max_sessions = 3, .session_ttl_ms = 300};
    esim_error err;
    assert_int_equal(sim_smdp_new(fx.base, &cfg, &fx.smdp, &err), ESIM_OK);
    snprintf(fx.url, sizeof fx.url, "%s", sim_smdp_url(fx.smdp));
    snprintf(fx.es9, sizeof fx.es9, "%s/gsma/rsp2/es9plus/", fx.url);
    char chal[64], buf[64], first[64];
    for (int i = 0; i < 3; i++) {
        json_t *r = initiate(chal);
        assert_string_equal(status_of(r, buf, sizeof buf), "Executed-Success");
        if (i == 0)
            snprintf(first, sizeof first, "%s", sim_json_str(r, "transactionId"));
        json_decref(r);
    }
    json_t *r = initiate(chal);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.8/6.4"); /* full: retry later */
    json_decref(r);
    assert_int_equal(sim_smdp_session_count(fx.smdp), 3);
    /* Abandoned sessions expire: room again, and the old ones are gone. */
    usleep(400 * 1000);
    r = initiate(chal);
    assert_string_equal(status_of(r, buf, sizeof buf), "Executed-Success");
    json_decref(r);
    assert_int_equal(sim_smdp_session_count(fx.smdp), 1);
    r = es9("cancelSession", json_pack("{s:s}", "transactionId", first), NULL);
    assert_string_equal(status_of(r, buf, sizeof buf), "8.10.1/3.9");
    json_decref(r);
}

/* Over TLS an answer is several writes; with Nagle's algorithm on the
 * SM-DP+'s sockets each write after the first waited for the client's
 * delayed ACK, about 40 ms per ES9+ answer on Linux (issue 17). Every
 * connection it accepts has TCP_NODELAY. */
static void test_answers_not_held_back(void **state)
{
    (void)state;
    st_reply w = {0};
    char url[200];
    snprintf(url, sizeof url, "%s/admin/orders", fx.url);
    sim_http_request req = {.method = "GET", .url = url, .ca_file = sim_pki_ca_file(fx.pki)};
    assert_int_equal(sim_http_send(fx.http, &req, st_reply_cb, &w, NULL), ESIM_OK);
    st_run_until(fx.base, &w.done);
    assert_int_equal(w.err, ESIM_OK);
    esim_buf_free(&w.body);
    size_t nagle = 0;
    /* The client keeps its connection for the next request: still open. */
    assert_int_equal(st_accepted_on((uint16_t)atoi(strrchr(fx.url, ':') + 1), &nagle), 1);
    assert_int_equal(nagle, 0);
}

/* ---- an answer in one TLS record ---- */

typedef struct {
    uint16_t port;
    const char *ca;
    int app_records; /* application data records received */
    char resp[4096];
    size_t got;
    atomic_bool done;
} record_client;

static void count_records(int write_p, int version, int content_type, const void *buf, size_t len,
                          SSL *ssl, void *arg)
{
    (void)version;
    (void)ssl;
    record_client *c = arg;
    if (!write_p && content_type == SSL3_RT_INNER_CONTENT_TYPE && len == 1 &&
        ((const unsigned char *)buf)[0] == SSL3_RT_APPLICATION_DATA)
        c->app_records++;
}

/* Whole: the head and Content-Length bytes of body after it. */
static bool response_whole(const char *r, size_t got)
{
    const char *end = strstr(r, "\r\n\r\n"), *cl = strstr(r, "Content-Length: ");
    return end && cl && cl < end && got >= (size_t)(end + 4 - r) + strtoul(cl + 16, NULL, 10);
}

/* A plain OpenSSL client on its own thread (the SM-DP+ runs on the test's
 * loop): one ES9+ request, its answer read whole, the records counted. */
static void *record_client_run(void *arg)
{
    record_client *c = arg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(c->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ctx && fd >= 0 && SSL_CTX_load_verify_locations(ctx, c->ca, NULL) == 1 &&
        connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && (ssl = SSL_new(ctx)) != NULL) {
        SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
        SSL_set_fd(ssl, fd);
        SSL_set_msg_callback(ssl, count_records);
        SSL_set_msg_callback_arg(ssl, c);
        static const char req[] = "POST /gsma/rsp2/es9plus/initiateAuthentication HTTP/1.1\r\n"
                                  "Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                  "Content-Length: 2\r\n\r\n{}";
        if (SSL_connect(ssl) == 1 && SSL_write(ssl, req, (int)sizeof req - 1) > 0)
            while (!response_whole(c->resp, c->got)) {
                int r = SSL_read(ssl, c->resp + c->got, (int)(sizeof c->resp - 1 - c->got));
                if (r <= 0)
                    break;
                c->got += (size_t)r;
                c->resp[c->got] = 0;
            }
    }
    SSL_free(ssl);
    if (fd >= 0)
        close(fd);
    SSL_CTX_free(ctx);
    atomic_store(&c->done, true);
    return NULL;
}

/* An answer's head and body leave in one TLS record: one write on the
 * SM-DP+'s side and one read on the device's, not one each. */
static void test_answer_in_one_record(void **state)
{
    (void)state;
    static record_client c;
    memset(&c, 0, sizeof c);
    c.port = sim_smdp_port(fx.smdp);
    c.ca = sim_pki_ca_file(fx.pki);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, record_client_run, &c), 0);
    int64_t start = esim_mono_ms();
    while (!atomic_load(&c.done) && esim_mono_ms() - start < 30000) {
        struct timeval tv = {0, 20 * 1000};
        event_base_loopexit(fx.base, &tv);
        event_base_dispatch(fx.base);
    }
    pthread_join(th, NULL);
    assert_true(response_whole(c.resp, c.got));
    assert_non_null(strstr(c.resp, "\"reasonCode\":\"2.1\"")); /* the body came */
    assert_int_equal(c.app_records, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_download_install_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_ci, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forged_signature, setup, teardown),
        cmocka_unit_test_setup_teardown(test_euicc_key_tables, setup, teardown),
        cmocka_unit_test_setup_teardown(test_euicc_certificate_checks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replayed_challenge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notification_from_other_eid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_install_failure_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_and_csv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_token_and_persistence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_needs_a_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authenticate_without_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_cap_and_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_chain_verified_per_handshake, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_chain_signature_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_es9_connections_per_device, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answers_not_held_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_in_one_record, setup, teardown),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
