/*
 * test_sim_es10.c — the virtual eUICC's SGP.32 side through its one DER
 * entry point sim_euicc_es10(): AddInitialEim and the eIM configuration,
 * LoadEuiccPackage (eIM signature, EID, counter: replayError,
 * counterValueOutOfRange, the unsigned error for a bad signature), PSMOs and
 * eCOs, results signed with the eUICC's key, notifications, certificates,
 * bad DER refused without a change, and the state across save/load. The
 * requests are built and the answers read with the sgp32/ layer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "EUICCInfo2Sgp22.h"
#include "EuiccConfiguredAddressesResponse.h"
#include "sgp32/sgp32.h"
#include "tests/sim/sim_test.h"

#define EIM_A "eim-a.example"
#define EIM_B "eim-b.example"

static struct {
    char *dir;
    sim_pki *pki;
    esim_cert eim; /* the test PKI's eIM certificate and key */
    esim_buf eim_der;
    esim_cert other; /* a second eIM key, certified by the CI */
    esim_buf other_der;
    esim_buf stray_der; /* an eIM certificate from the test CA, not the CI */
    char eid[ESIM_EID_LEN + 1];
    char iccid[2][SIM_ICCID_MAX + 1];
} fx;

static int setup_all(void **state)
{
    (void)state;
    fx.dir = st_tempdir();
    char pkidir[512], cert[600], key[600];
    snprintf(pkidir, sizeof pkidir, "%s/pki", fx.dir);
    esim_error err;
    if (sim_pki_open(pkidir, &fx.pki, &err) != ESIM_OK)
        return fprintf(stderr, "pki: %s\n", err.msg), -1;
    snprintf(cert, sizeof cert, "%s/eim.pem", pkidir);
    snprintf(key, sizeof key, "%s/eim.key", pkidir);
    if (esim_cert_load(cert, key, &fx.eim, &err) != ESIM_OK)
        return fprintf(stderr, "eim: %s\n", err.msg), -1;
    esim_cert ci = {0}, ca = {0}, stray = {0};
    esim_cert_spec spec = {.common_name = "another eIM", .key_type = ESIM_KEY_EC_P256, .days = 30};
    if (esim_pki_load(pkidir, "ci", &ci, &err) != ESIM_OK ||
        esim_pki_load(pkidir, "ca", &ca, &err) != ESIM_OK ||
        esim_cert_issue(&spec, &ci, &fx.other, &err) != ESIM_OK ||
        esim_cert_issue(&spec, &ca, &stray, &err) != ESIM_OK)
        return fprintf(stderr, "other: %s\n", err.msg), -1;
    if (sim_x509_to_der(fx.eim.x509, &fx.eim_der) != ESIM_OK ||
        sim_x509_to_der(fx.other.x509, &fx.other_der) != ESIM_OK ||
        sim_x509_to_der(stray.x509, &fx.stray_der) != ESIM_OK)
        return -1;
    esim_cert_clear(&ci);
    esim_cert_clear(&ca);
    esim_cert_clear(&stray);
    st_eid(31, fx.eid);
    st_iccid(1, fx.iccid[0]);
    st_iccid(2, fx.iccid[1]);
    return 0;
}

static int teardown_all(void **state)
{
    (void)state;
    esim_cert_clear(&fx.eim);
    esim_cert_clear(&fx.other);
    esim_buf_free(&fx.eim_der);
    esim_buf_free(&fx.other_der);
    esim_buf_free(&fx.stray_der);
    sim_pki_free(fx.pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

/* ---- building requests with the sgp32 layer ------------------------------ */

static void set_str(OCTET_STRING_t *o, const char *s)
{
    assert_int_equal(OCTET_STRING_fromBuf(o, s, (int)strlen(s)), 0);
}

static long *long_of(long v)
{
    long *p = malloc(sizeof *p);
    assert_non_null(p);
    *p = v;
    return p;
}

/* An EimConfigurationData for |id| with |cert| (DER) as its key. */
static EimConfigurationData_t *eim_config(const char *id, const esim_buf *cert, long counter)
{
    EimConfigurationData_t *c = calloc(1, sizeof *c);
    assert_non_null(c);
    set_str(&c->eimId, id);
    c->eimFqdn = calloc(1, sizeof *c->eimFqdn);
    set_str(c->eimFqdn, "127.0.0.1:8443");
    c->eimIdType = long_of(2);
    c->counterValue = long_of(counter);
    if (cert) {
        c->eimPublicKeyData = calloc(1, sizeof *c->eimPublicKeyData);
        c->eimPublicKeyData->present = EimConfigurationData__eimPublicKeyData_PR_eimCertificate;
        void *tmp = NULL;
        assert_int_equal(sgp32_decode(&asn_DEF_Certificate, cert->data, cert->len, &tmp, NULL),
                         ESIM_OK);
        c->eimPublicKeyData->choice.eimCertificate = *(Certificate_t *)tmp;
        free(tmp);
    }
    c->eimSupportedProtocol = calloc(1, sizeof *c->eimSupportedProtocol);
    c->eimSupportedProtocol->buf = malloc(1);
    c->eimSupportedProtocol->buf[0] = 0x80; /* retrieveHttps */
    c->eimSupportedProtocol->size = 1;
    c->eimSupportedProtocol->bits_unused = 7;
    return c;
}

/* Runs |req| (DER of |td| |obj|, freed) and returns the answer's DER. */
static esim_err run(sim_euicc *e, const asn_TYPE_descriptor_t *td, void *obj, esim_buf *out)
{
    esim_buf der = {0};
    assert_int_equal(sgp32_encode(td, obj, &der, NULL), ESIM_OK);
    sgp32_free(td, obj);
    esim_buf_reset(out);
    esim_error err;
    esim_err rc = sim_euicc_es10(e, der.data, der.len, out, &err);
    esim_buf_free(&der);
    return rc;
}

static long add_initial(sim_euicc *e, EimConfigurationData_t *c)
{
    AddInitialEimRequest_t *q = calloc(1, sizeof *q);
    ASN_SEQUENCE_ADD(&q->eimConfigurationDataList.list, c);
    esim_buf out = {0};
    assert_int_equal(run(e, &asn_DEF_AddInitialEimRequest, q, &out), ESIM_OK);
    AddInitialEimResponse_t *a = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_AddInitialEimResponse, out.data, out.len, (void **)&a, NULL),
        ESIM_OK);
    long v;
    if (a->present == AddInitialEimResponse_PR_addInitialEimOk) {
        assert_int_equal(a->choice.addInitialEimOk.list.count, 1);
        assert_int_equal(a->choice.addInitialEimOk.list.array[0]->present,
                         AddInitialEimResponse__addInitialEimOk__Member_PR_associationToken);
        v = a->choice.addInitialEimOk.list.array[0]->choice.associationToken;
    } else {
        v = -a->choice.addInitialEimError; /* errors as negative numbers */
    }
    sgp32_free(&asn_DEF_AddInitialEimResponse, a);
    esim_buf_free(&out);
    return v;
}

static sim_euicc *new_associated(void)
{
    sim_euicc *e = NULL;
    assert_int_equal(sim_euicc_new(fx.pki, fx.eid, &e, NULL), ESIM_OK);
    for (int i = 0; i < 2; i++) {
        sim_profile p = {0};
        snprintf(p.iccid, sizeof p.iccid, "%s", fx.iccid[i]);
        p.profile_class = SIM_CLASS_OPERATIONAL;
        snprintf(p.service_provider, sizeof p.service_provider, "Operator %d", i);
        snprintf(p.smdp_address, sizeof p.smdp_address, "smdp.example:9443");
        sim_result r;
        uint8_t txid[16];
        memset(txid, 0x10 + i, sizeof txid); /* the RSP session's */
        sim_euicc_set_session(e, txid);
        assert_int_equal(sim_euicc_install(e, &p, &r, NULL), ESIM_OK);
        assert_int_equal(r, SIM_RES_OK);
    }
    assert_int_equal(add_initial(e, eim_config(EIM_A, &fx.eim_der, 0)), 1);
    return e;
}

static EuiccPackageRequest_t *package(const char *eim, const char *eid, long counter, bool psmo)
{
    EuiccPackageRequest_t *r = calloc(1, sizeof *r);
    assert_non_null(r);
    EuiccPackageSigned_t *s = &r->euiccPackageSigned;
    set_str(&s->eimId, eim);
    uint8_t b[16];
    assert_int_equal(sgp32_eid_to_bytes(eid, b, NULL), ESIM_OK);
    assert_int_equal(OCTET_STRING_fromBuf(&s->eidValue, (const char *)b, 16), 0);
    s->counterValue = counter;
    s->transactionId = calloc(1, sizeof *s->transactionId);
    assert_int_equal(OCTET_STRING_fromBuf(s->transactionId, "\x01\x02\x03\x04", 4), 0);
    s->euiccPackage.present = psmo ? EuiccPackage_PR_psmoList : EuiccPackage_PR_ecoList;
    return r;
}

static void add_psmo(EuiccPackageRequest_t *r, Psmo_PR kind, const char *iccid)
{
    Psmo_t *p = calloc(1, sizeof *p);
    p->present = kind;
    if (iccid) {
        uint8_t b[10];
        assert_int_equal(sgp32_iccid_to_bytes(iccid, b, NULL), ESIM_OK);
        Iccid_t *dst = kind == Psmo_PR_enable    ? &p->choice.enable.iccid
                       : kind == Psmo_PR_disable ? &p->choice.disable.iccid
                                                 : &p->choice.delete.iccid;
        assert_int_equal(OCTET_STRING_fromBuf(dst, (const char *)b, 10), 0);
    }
    ASN_SEQUENCE_ADD(&r->euiccPackageSigned.euiccPackage.choice.psmoList.list, p);
}

static void add_eco(EuiccPackageRequest_t *r, Eco_t *c)
{
    ASN_SEQUENCE_ADD(&r->euiccPackageSigned.euiccPackage.choice.ecoList.list, c);
}

typedef struct {
    EuiccPackageResult_t *res;
    uint8_t eim_sig[64];
} loaded;

/* Signs |r| with |key| over the association |token|, loads it and decodes
 * the BF51 answer; the result's eUICC signature is checked when signed. */
static loaded load(sim_euicc *e, EuiccPackageRequest_t *r, EVP_PKEY *key, long token)
{
    assert_int_equal(sgp32_package_sign(r, key, &token, NULL), ESIM_OK);
    loaded l = {0};
    memcpy(l.eim_sig, r->eimSignature.buf, 64);
    esim_buf out = {0};
    assert_int_equal(run(e, &asn_DEF_EuiccPackageRequest, r, &out), ESIM_OK);
    assert_int_equal(out.data[0], 0xBF);
    assert_int_equal(out.data[1], 0x51);
    assert_int_equal(sgp32_decode_explicit(SGP32_TAG_EUICC_PACKAGE, &asn_DEF_EuiccPackageResult,
                                           out.data, out.len, (void **)&l.res, NULL),
                     ESIM_OK);
    esim_buf_free(&out);
    if (l.res->present != EuiccPackageResult_PR_euiccPackageErrorUnsigned) {
        const esim_buf *cert, *eum;
        assert_int_equal(sim_euicc_cert_der(e, &cert, &eum, NULL), ESIM_OK);
        X509 *x = sim_x509_from_der(cert->data, cert->len);
        EVP_PKEY *pub = X509_get_pubkey(x);
        assert_int_equal(sgp32_result_verify(l.res, pub, l.eim_sig, 64, NULL), ESIM_OK);
        /* and not for another request's signature */
        uint8_t wrong[64];
        memcpy(wrong, l.eim_sig, 64);
        wrong[0] ^= 1;
        assert_int_equal(sgp32_result_verify(l.res, pub, wrong, 64, NULL), ESIM_ECRYPTO);
        EVP_PKEY_free(pub);
        X509_free(x);
    }
    return l;
}

static void loaded_free(loaded *l)
{
    sgp32_free(&asn_DEF_EuiccPackageResult, l->res);
}

static long package_error(const loaded *l)
{
    assert_int_equal(l->res->present, EuiccPackageResult_PR_euiccPackageErrorSigned);
    return l->res->choice.euiccPackageErrorSigned.euiccPackageErrorDataSigned.euiccPackageErrorCode;
}

static const EuiccPackageResultDataSigned_t *result_data(const loaded *l)
{
    assert_int_equal(l->res->present, EuiccPackageResult_PR_euiccPackageResultSigned);
    return &l->res->choice.euiccPackageResultSigned.euiccPackageResultDataSigned;
}

static uint64_t counter_of(const sim_euicc *e, const char *eim)
{
    const sim_eim_info *m = sim_euicc_eim_find(e, eim);
    assert_non_null(m);
    return m->counter;
}

/* ---- tests ----------------------------------------------------------------- */

static void test_get_eid_and_certs(void **state)
{
    (void)state;
    sim_euicc *e = NULL;
    assert_int_equal(sim_euicc_new(fx.pki, fx.eid, &e, NULL), ESIM_OK);
    esim_buf out = {0}, eid = {0};
    assert_int_equal(esim_hex_decode(fx.eid, &eid, NULL), ESIM_OK);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x3E\x03\x5C\x01\x5A", 6, &out, NULL),
                     ESIM_OK);
    assert_int_equal(out.len, 21);
    assert_memory_equal(out.data, "\xBF\x3E\x12\x5A\x10", 5);
    assert_memory_equal(out.data + 5, eid.data, 16);
    /* GetCerts (BF56): the eUICC certificate and its EUM, for the IPA. */
    esim_buf_reset(&out);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x56\x00", 3, &out, NULL), ESIM_OK);
    GetCertsResponse_t *c = NULL;
    assert_int_equal(sgp32_decode(&asn_DEF_GetCertsResponse, out.data, out.len, (void **)&c, NULL),
                     ESIM_OK);
    assert_int_equal(c->present, GetCertsResponse_PR_certs);
    esim_buf der = {0};
    assert_int_equal(
        sgp32_encode(&asn_DEF_Certificate, &c->choice.certs.euiccCertificate, &der, NULL), ESIM_OK);
    const esim_buf *cert, *eum;
    assert_int_equal(sim_euicc_cert_der(e, &cert, &eum, NULL), ESIM_OK);
    assert_int_equal(der.len, cert->len);
    assert_memory_equal(der.data, cert->data, der.len);
    sgp32_free(&asn_DEF_GetCertsResponse, c);
    /* Chip information PC/SC clients ask for: EUICCInfo2, addresses, RAT. */
    esim_buf_reset(&out);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x22\x00", 3, &out, NULL), ESIM_OK);
    EUICCInfo2Sgp22_t *i2 = NULL;
    assert_int_equal(sgp32_decode(&asn_DEF_EUICCInfo2Sgp22, out.data, out.len, (void **)&i2, NULL),
                     ESIM_OK);
    assert_memory_equal(i2->svn.buf, "\x02\x02\x02", 3);
    assert_int_equal(i2->euiccCiPKIdListForVerification.list.count, 1);
    sgp32_free(&asn_DEF_EUICCInfo2Sgp22, i2);
    esim_buf_reset(&out);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x3C\x00", 3, &out, NULL), ESIM_OK);
    EuiccConfiguredAddressesResponse_t *ca = NULL;
    assert_int_equal(sgp32_decode(&asn_DEF_EuiccConfiguredAddressesResponse, out.data, out.len,
                                  (void **)&ca, NULL),
                     ESIM_OK);
    assert_null(ca->defaultDpAddress);
    assert_memory_equal(ca->rootDsAddress.buf, "lpa.ds.gsma.com", 15);
    sgp32_free(&asn_DEF_EuiccConfiguredAddressesResponse, ca);
    esim_buf_reset(&out);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x43\x00", 3, &out, NULL), ESIM_OK);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.data, "\xBF\x43\x02\xA0\x00", 5);
    /* Unknown tags and bad DER: ESIM_EINVAL and nothing appended. */
    esim_buf_reset(&out);
    esim_buf_reset(&out);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x77\x00", 3, &out, NULL),
                     ESIM_EINVAL);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x3E\x05\x5C\x01", 5, &out, NULL),
                     ESIM_EINVAL);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x3E\x03\x5C\x01\x4F", 6, &out, NULL),
                     ESIM_EINVAL);
    assert_int_equal(out.len, 0);
    esim_buf_free(&der);
    esim_buf_free(&out);
    esim_buf_free(&eid);
    sim_euicc_free(e);
}

static void test_add_initial_eim_and_config(void **state)
{
    (void)state;
    sim_euicc *e = new_associated();
    /* A second AddInitialEim is refused: later eIMs come as signed eCOs. */
    assert_int_equal(add_initial(e, eim_config(EIM_B, &fx.other_der, 0)),
                     -AddInitialEimResponse__addInitialEimError_unsignedEimConfigDisallowed);
    assert_int_equal(sim_euicc_eim_count(e), 1);
    esim_buf out = {0};
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x55\x00", 3, &out, NULL), ESIM_OK);
    GetEimConfigurationDataResponse_t *g = NULL;
    assert_int_equal(sgp32_decode(&asn_DEF_GetEimConfigurationDataResponse, out.data, out.len,
                                  (void **)&g, NULL),
                     ESIM_OK);
    assert_int_equal(g->eimConfigurationDataList.list.count, 1);
    const EimConfigurationData_t *c = g->eimConfigurationDataList.list.array[0];
    assert_int_equal(c->eimId.size, strlen(EIM_A));
    assert_memory_equal(c->eimId.buf, EIM_A, strlen(EIM_A));
    assert_non_null(c->counterValue);
    assert_int_equal(*c->counterValue, 0);
    assert_non_null(c->associationToken);
    assert_int_equal(*c->associationToken, 1);
    assert_int_equal(*c->eimIdType, 2);
    assert_non_null(c->eimSupportedProtocol);
    assert_int_equal(c->eimSupportedProtocol->buf[0], 0x80);
    sgp32_free(&asn_DEF_GetEimConfigurationDataResponse, g);
    /* A config whose key is not a key is refused whole. */
    sim_euicc *f = NULL;
    assert_int_equal(sim_euicc_new(fx.pki, fx.eid, &f, NULL), ESIM_OK);
    esim_buf junk = {0};
    esim_buf_append(&junk, "\x30\x03\x02\x01\x01", 5);
    AddInitialEimRequest_t *q = calloc(1, sizeof *q);
    ASN_SEQUENCE_ADD(&q->eimConfigurationDataList.list, eim_config(EIM_B, &junk, 0));
    assert_int_equal(run(f, &asn_DEF_AddInitialEimRequest, q, &out), ESIM_EINVAL);
    assert_int_equal(sim_euicc_eim_count(f), 0);
    esim_buf_free(&junk);
    /* An eIM certificate that does not chain to the eUICC's CI, or a
     * euiccCiPKId naming another CI: ciPKUnknown, nothing kept. */
    assert_int_equal(add_initial(f, eim_config(EIM_B, &fx.stray_der, 0)),
                     -AddInitialEimResponse__addInitialEimError_ciPKUnknown);
    EimConfigurationData_t *other_ci = eim_config(EIM_B, &fx.other_der, 0);
    other_ci->euiccCiPKId = calloc(1, sizeof *other_ci->euiccCiPKId);
    OCTET_STRING_fromBuf(other_ci->euiccCiPKId, "not-our-CI-key-id...", 20);
    assert_int_equal(add_initial(f, other_ci),
                     -AddInitialEimResponse__addInitialEimError_ciPKUnknown);
    assert_int_equal(sim_euicc_eim_count(f), 0);
    assert_int_equal(add_initial(f, eim_config(EIM_B, &fx.other_der, 0)), 1);
    sim_euicc_free(f);
    esim_buf_free(&out);
    sim_euicc_free(e);
}

/* A fleet's eUICCs share the PKI, not their verdicts: each eUICC given
 * the eIM certificate verifies it against the CI itself, each time it is
 * given it (no eUICC takes another's result, nor its own earlier one);
 * a stray certificate is refused each time, a copy of the good one with
 * its signature changed is refused although the good one verified just
 * before. */
static void test_eim_cert_verified_by_each_euicc(void **state)
{
    (void)state;
    /* A PKI of its own: the other tests' eUICCs verified on fx.pki. */
    char pkidir[512];
    snprintf(pkidir, sizeof pkidir, "%s/pki", fx.dir);
    sim_pki *pki = NULL;
    assert_int_equal(sim_pki_open(pkidir, &pki, NULL), ESIM_OK);
    sim_euicc *e[4] = {0};
    for (int i = 0; i < 4; i++)
        assert_int_equal(sim_euicc_new(pki, fx.eid, &e[i], NULL), ESIM_OK);
    assert_int_equal(sim_cert_cache_chain_checks(pki->server_certs), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(add_initial(e[i], eim_config(EIM_A, &fx.eim_der, 0)), 1);
    assert_int_equal(sim_cert_cache_chain_checks(pki->server_certs), 2);
    /* The key each keeps is the certificate's. */
    assert_int_equal(sim_euicc_eim_count(e[1]), 1);
    assert_true(sim_euicc_eim_at(e[1], 0)->key_is_cert);
    assert_int_equal(sim_euicc_eim_at(e[1], 0)->key_der.len, fx.eim_der.len);
    assert_memory_equal(sim_euicc_eim_at(e[1], 0)->key_der.data, fx.eim_der.data, fx.eim_der.len);
    for (int k = 0; k < 2; k++)
        assert_int_equal(add_initial(e[2], eim_config(EIM_B, &fx.stray_der, 0)),
                         -AddInitialEimResponse__addInitialEimError_ciPKUnknown);
    esim_buf forged = {0};
    esim_buf_append(&forged, fx.eim_der.data, fx.eim_der.len);
    forged.data[forged.len - 5] ^= 0x01; /* inside the signature's s */
    assert_int_equal(add_initial(e[3], eim_config(EIM_A, &forged, 0)),
                     -AddInitialEimResponse__addInitialEimError_ciPKUnknown);
    assert_int_equal(sim_euicc_eim_count(e[2]) + sim_euicc_eim_count(e[3]), 0);
    size_t n = sim_cert_cache_chain_checks(pki->server_certs);
    assert_int_equal(n, 5); /* the first two, the stray twice, the forged */
    /* The good one is checked again by the next eUICC shown it. */
    assert_int_equal(add_initial(e[3], eim_config(EIM_A, &fx.eim_der, 0)), 1);
    assert_int_equal(sim_cert_cache_chain_checks(pki->server_certs), n + 1);
    esim_buf_free(&forged);
    for (int i = 0; i < 4; i++)
        sim_euicc_free(e[i]);
    sim_pki_free(pki);
}

static void test_package_enable_and_counter(void **state)
{
    (void)state;
    sim_euicc *e = new_associated();
    /* enable + getRAT with counter 1 */
    EuiccPackageRequest_t *r = package(EIM_A, fx.eid, 1, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[0]);
    add_psmo(r, Psmo_PR_getRAT, NULL);
    loaded l = load(e, r, fx.eim.key, 1);
    const EuiccPackageResultDataSigned_t *d = result_data(&l);
    assert_int_equal(d->counterValue, 1);
    assert_memory_equal(d->eimId.buf, EIM_A, strlen(EIM_A));
    assert_non_null(d->transactionId);
    assert_int_equal(d->euiccResult.list.count, 2);
    assert_int_equal(d->euiccResult.list.array[0]->present, EuiccResultData_PR_enableResult);
    assert_int_equal(d->euiccResult.list.array[0]->choice.enableResult, 0);
    assert_int_equal(d->euiccResult.list.array[1]->present, EuiccResultData_PR_getRATResult);
    loaded_free(&l);
    assert_string_equal(sim_euicc_enabled(e)->iccid, fx.iccid[0]);
    assert_int_equal(counter_of(e, EIM_A), 1);

    /* The same counter again: replayError, signed; nothing runs. */
    r = package(EIM_A, fx.eid, 1, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[1]);
    l = load(e, r, fx.eim.key, 1);
    assert_int_equal(package_error(&l),
                     EuiccPackageErrorDataSigned__euiccPackageErrorCode_replayError);
    loaded_free(&l);
    assert_string_equal(sim_euicc_enabled(e)->iccid, fx.iccid[0]);
    /* More than 1,000,000 above the last: counterValueOutOfRange. */
    r = package(EIM_A, fx.eid, 1 + 1000001, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[1]);
    l = load(e, r, fx.eim.key, 1);
    assert_int_equal(package_error(&l),
                     EuiccPackageErrorDataSigned__euiccPackageErrorCode_counterValueOutOfRange);
    loaded_free(&l);
    assert_int_equal(counter_of(e, EIM_A), 1);
    /* Another EID: invalidEid. */
    char other[ESIM_EID_LEN + 1];
    st_eid(32, other);
    r = package(EIM_A, other, 2, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[1]);
    l = load(e, r, fx.eim.key, 1);
    assert_int_equal(package_error(&l),
                     EuiccPackageErrorDataSigned__euiccPackageErrorCode_invalidEid);
    loaded_free(&l);
    /* Exactly 1,000,000 above: accepted. A disable of a disabled profile is
     * answered in the result, not refused as a package. */
    r = package(EIM_A, fx.eid, 1 + 1000000, true);
    add_psmo(r, Psmo_PR_disable, fx.iccid[1]);
    add_psmo(r, Psmo_PR_enable, fx.iccid[1]);
    l = load(e, r, fx.eim.key, 1);
    d = result_data(&l);
    assert_int_equal(d->euiccResult.list.array[0]->choice.disableResult, 2);
    assert_int_equal(d->euiccResult.list.array[1]->choice.enableResult, 0);
    loaded_free(&l);
    assert_int_equal(counter_of(e, EIM_A), 1000001);
    assert_string_equal(sim_euicc_enabled(e)->iccid, fx.iccid[1]);
    sim_euicc_free(e);
}

static void test_package_bad_signature(void **state)
{
    (void)state;
    sim_euicc *e = new_associated();
    uint64_t seq_before = sim_euicc_notification_count(e);
    /* Signed by a key that is not the eIM's: the unsigned error. */
    EuiccPackageRequest_t *r = package(EIM_A, fx.eid, 5, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[0]);
    loaded l = load(e, r, fx.other.key, 1);
    assert_int_equal(l.res->present, EuiccPackageResult_PR_euiccPackageErrorUnsigned);
    assert_non_null(l.res->choice.euiccPackageErrorUnsigned.associationToken);
    assert_int_equal(*l.res->choice.euiccPackageErrorUnsigned.associationToken, 1);
    loaded_free(&l);
    /* The right key over the wrong association token. */
    r = package(EIM_A, fx.eid, 5, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[0]);
    l = load(e, r, fx.eim.key, 2);
    assert_int_equal(l.res->present, EuiccPackageResult_PR_euiccPackageErrorUnsigned);
    loaded_free(&l);
    /* A changed byte after signing. */
    r = package(EIM_A, fx.eid, 5, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[0]);
    long token = 1;
    assert_int_equal(sgp32_package_sign(r, fx.eim.key, &token, NULL), ESIM_OK);
    r->euiccPackageSigned.counterValue = 6;
    esim_buf out = {0};
    assert_int_equal(run(e, &asn_DEF_EuiccPackageRequest, r, &out), ESIM_OK);
    EuiccPackageResult_t *res = NULL;
    assert_int_equal(sgp32_decode_explicit(SGP32_TAG_EUICC_PACKAGE, &asn_DEF_EuiccPackageResult,
                                           out.data, out.len, (void **)&res, NULL),
                     ESIM_OK);
    assert_int_equal(res->present, EuiccPackageResult_PR_euiccPackageErrorUnsigned);
    sgp32_free(&asn_DEF_EuiccPackageResult, res);
    /* An eIM the eUICC does not know: unsigned, no token. */
    r = package("stranger", fx.eid, 5, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[0]);
    l = load(e, r, fx.eim.key, 1);
    assert_int_equal(l.res->present, EuiccPackageResult_PR_euiccPackageErrorUnsigned);
    assert_null(l.res->choice.euiccPackageErrorUnsigned.associationToken);
    loaded_free(&l);
    /* None of it changed anything. */
    assert_int_equal(counter_of(e, EIM_A), 0);
    assert_null(sim_euicc_enabled(e));
    assert_int_equal(sim_euicc_notification_count(e), seq_before);
    /* Bad DER (a truncated package): ESIM_EINVAL, nothing changes. */
    r = package(EIM_A, fx.eid, 5, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[0]);
    assert_int_equal(sgp32_package_sign(r, fx.eim.key, &token, NULL), ESIM_OK);
    esim_buf der = {0};
    assert_int_equal(sgp32_encode(&asn_DEF_EuiccPackageRequest, r, &der, NULL), ESIM_OK);
    sgp32_free(&asn_DEF_EuiccPackageRequest, r);
    esim_buf_reset(&out);
    assert_int_equal(sim_euicc_es10(e, der.data, der.len - 1, &out, NULL), ESIM_EINVAL);
    der.data[2] ^= 0x40; /* a length that no longer fits */
    assert_int_equal(sim_euicc_es10(e, der.data, der.len, &out, NULL), ESIM_EINVAL);
    assert_int_equal(out.len, 0);
    assert_int_equal(counter_of(e, EIM_A), 0);
    assert_null(sim_euicc_enabled(e));
    esim_buf_free(&der);
    esim_buf_free(&out);
    sim_euicc_free(e);
}

static void test_ecos_and_persistence(void **state)
{
    (void)state;
    sim_euicc *e = new_associated();
    /* eIM A adds eIM B (signed eCO): B gets token 2. */
    EuiccPackageRequest_t *r = package(EIM_A, fx.eid, 1, false);
    Eco_t *c = calloc(1, sizeof *c);
    c->present = Eco_PR_addEim;
    EimConfigurationData_t *cfg = eim_config(EIM_B, &fx.other_der, 10);
    c->choice.addEim = *cfg;
    free(cfg);
    add_eco(r, c);
    Eco_t *list = calloc(1, sizeof *list);
    list->present = Eco_PR_listEim;
    add_eco(r, list);
    loaded l = load(e, r, fx.eim.key, 1);
    const EuiccPackageResultDataSigned_t *d = result_data(&l);
    assert_int_equal(d->euiccResult.list.array[0]->present, EuiccResultData_PR_addEimResult);
    assert_int_equal(d->euiccResult.list.array[0]->choice.addEimResult.present,
                     AddEimResult_PR_associationToken);
    assert_int_equal(d->euiccResult.list.array[0]->choice.addEimResult.choice.associationToken, 2);
    const ListEimResult_t *le = &d->euiccResult.list.array[1]->choice.listEimResult;
    assert_int_equal(le->present, ListEimResult_PR_eimIdList);
    assert_int_equal(le->choice.eimIdList.list.count, 2);
    loaded_free(&l);
    /* B's packages: its own key, its token, its own counter (from 10). */
    r = package(EIM_B, fx.eid, 10, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[1]);
    l = load(e, r, fx.other.key, 2);
    assert_int_equal(package_error(&l),
                     EuiccPackageErrorDataSigned__euiccPackageErrorCode_replayError);
    loaded_free(&l);
    r = package(EIM_B, fx.eid, 11, true);
    add_psmo(r, Psmo_PR_enable, fx.iccid[1]);
    l = load(e, r, fx.other.key, 2);
    assert_int_equal(result_data(&l)->euiccResult.list.array[0]->choice.enableResult, 0);
    loaded_free(&l);
    assert_int_equal(counter_of(e, EIM_B), 11);
    assert_int_equal(counter_of(e, EIM_A), 1);

    /* Save, load: eIMs, counters and tokens survive a power cycle. */
    char path[600];
    snprintf(path, sizeof path, "%s/es10-state.json", fx.dir);
    assert_int_equal(sim_euicc_save(e, path, NULL), ESIM_OK);
    sim_euicc_free(e);
    e = NULL;
    assert_int_equal(sim_euicc_load(fx.pki, path, &e, NULL), ESIM_OK);
    assert_int_equal(sim_euicc_eim_count(e), 2);
    assert_int_equal(counter_of(e, EIM_B), 11);
    assert_int_equal(sim_euicc_eim_find(e, EIM_B)->association_token, 2);
    assert_true(sim_euicc_eim_find(e, EIM_B)->key_is_cert);
    r = package(EIM_B, fx.eid, 11, true); /* replayed after the reload */
    add_psmo(r, Psmo_PR_disable, fx.iccid[1]);
    l = load(e, r, fx.other.key, 2);
    assert_int_equal(package_error(&l),
                     EuiccPackageErrorDataSigned__euiccPackageErrorCode_replayError);
    loaded_free(&l);

    /* updateEim may not lower a counter; deleteEim; the last one says so. */
    r = package(EIM_A, fx.eid, 2, false);
    c = calloc(1, sizeof *c);
    c->present = Eco_PR_updateEim;
    cfg = eim_config(EIM_B, NULL, 3);
    c->choice.updateEim = *cfg;
    free(cfg);
    add_eco(r, c);
    c = calloc(1, sizeof *c);
    c->present = Eco_PR_deleteEim;
    set_str(&c->choice.deleteEim.eimId, "nobody");
    add_eco(r, c);
    c = calloc(1, sizeof *c);
    c->present = Eco_PR_deleteEim;
    set_str(&c->choice.deleteEim.eimId, EIM_B);
    add_eco(r, c);
    c = calloc(1, sizeof *c); /* a new eIM after the reload: token 3, never 1 or 2 again */
    c->present = Eco_PR_addEim;
    cfg = eim_config("eim-c.example", &fx.other_der, 0);
    c->choice.addEim = *cfg;
    free(cfg);
    add_eco(r, c);
    c = calloc(1, sizeof *c); /* a certificate not from the eUICC's CI */
    c->present = Eco_PR_addEim;
    cfg = eim_config("eim-d.example", &fx.stray_der, 0);
    c->choice.addEim = *cfg;
    free(cfg);
    add_eco(r, c);
    c = calloc(1, sizeof *c);
    c->present = Eco_PR_updateEim;
    cfg = eim_config(EIM_A, &fx.stray_der, 5);
    c->choice.updateEim = *cfg;
    free(cfg);
    add_eco(r, c);
    l = load(e, r, fx.eim.key, 1);
    d = result_data(&l);
    assert_int_equal(d->euiccResult.list.array[0]->choice.updateEimResult,
                     EuiccResultData__updateEimResult_counterValueOutOfRange);
    assert_int_equal(d->euiccResult.list.array[1]->choice.deleteEimResult,
                     EuiccResultData__deleteEimResult_eimNotFound);
    assert_int_equal(d->euiccResult.list.array[2]->choice.deleteEimResult,
                     EuiccResultData__deleteEimResult_ok);
    assert_int_equal(d->euiccResult.list.array[3]->choice.addEimResult.choice.associationToken, 3);
    assert_int_equal(d->euiccResult.list.array[4]->choice.addEimResult.present,
                     AddEimResult_PR_addEimResultCode);
    assert_int_equal(d->euiccResult.list.array[4]->choice.addEimResult.choice.addEimResultCode,
                     AddEimResult__addEimResultCode_ciPKUnknown);
    assert_int_equal(d->euiccResult.list.array[5]->choice.updateEimResult,
                     EuiccResultData__updateEimResult_ciPKUnknown);
    loaded_free(&l);
    assert_null(sim_euicc_eim_find(e, "eim-d.example"));
    assert_int_equal(counter_of(e, EIM_A), 2);
    assert_null(sim_euicc_eim_find(e, EIM_B));
    r = package(EIM_A, fx.eid, 3, false);
    c = calloc(1, sizeof *c);
    c->present = Eco_PR_deleteEim;
    set_str(&c->choice.deleteEim.eimId, "eim-c.example");
    add_eco(r, c);
    c = calloc(1, sizeof *c);
    c->present = Eco_PR_deleteEim;
    set_str(&c->choice.deleteEim.eimId, EIM_A);
    add_eco(r, c);
    l = load(e, r, fx.eim.key, 1);
    d = result_data(&l);
    assert_int_equal(d->euiccResult.list.array[1]->choice.deleteEimResult,
                     EuiccResultData__deleteEimResult_lastEimDeleted);
    loaded_free(&l);
    assert_int_equal(sim_euicc_eim_count(e), 0);
    sim_euicc_free(e);
}

static void test_profiles_and_notifications(void **state)
{
    (void)state;
    sim_euicc *e = new_associated();
    esim_buf out = {0};
    /* ProfileInfoList (BF2D), all and by ICCID. */
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x2D\x00", 3, &out, NULL), ESIM_OK);
    ProfileInfoListResponse_t *p = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_ProfileInfoListResponse, out.data, out.len, (void **)&p, NULL),
        ESIM_OK);
    assert_int_equal(p->present, ProfileInfoListResponse_PR_profileInfoListOk);
    assert_int_equal(p->choice.profileInfoListOk.list.count, 2);
    assert_int_equal(*p->choice.profileInfoListOk.list.array[0]->profileState, 0);
    sgp32_free(&asn_DEF_ProfileInfoListResponse, p);
    ProfileInfoListRequest_t *q = calloc(1, sizeof *q);
    q->searchCriteria = calloc(1, sizeof *q->searchCriteria);
    q->searchCriteria->present = ProfileInfoListRequest__searchCriteria_PR_iccid;
    uint8_t b[10];
    assert_int_equal(sgp32_iccid_to_bytes(fx.iccid[1], b, NULL), ESIM_OK);
    OCTET_STRING_fromBuf(&q->searchCriteria->choice.iccid, (const char *)b, 10);
    assert_int_equal(run(e, &asn_DEF_ProfileInfoListRequest, q, &out), ESIM_OK);
    assert_int_equal(
        sgp32_decode(&asn_DEF_ProfileInfoListResponse, out.data, out.len, (void **)&p, NULL),
        ESIM_OK);
    assert_int_equal(p->choice.profileInfoListOk.list.count, 1);
    assert_memory_equal(p->choice.profileInfoListOk.list.array[0]->iccid->buf, b, 10);
    sgp32_free(&asn_DEF_ProfileInfoListResponse, p);

    /* RetrieveNotificationsList (BF2B): the two installs, each as its
     * ProfileInstallationResult (the session's transactionId, a success),
     * signed by the eUICC (euiccSignPIR). */
    esim_buf_reset(&out);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x2B\x00", 3, &out, NULL), ESIM_OK);
    RetrieveNotificationsListResponse_t *n = NULL;
    assert_int_equal(sgp32_decode_explicit(SGP32_TAG_NOTIFICATIONS_LIST,
                                           &asn_DEF_RetrieveNotificationsListResponse, out.data,
                                           out.len, (void **)&n, NULL),
                     ESIM_OK);
    assert_int_equal(n->present, RetrieveNotificationsListResponse_PR_notificationList);
    assert_int_equal(n->choice.notificationList.list.count, 2);
    const esim_buf *cert, *eum;
    assert_int_equal(sim_euicc_cert_der(e, &cert, &eum, NULL), ESIM_OK);
    X509 *x = sim_x509_from_der(cert->data, cert->len);
    EVP_PKEY *pub = X509_get_pubkey(x);
    long seq = 0;
    for (int i = 0; i < 2; i++) {
        const PendingNotification_t *pn = n->choice.notificationList.list.array[i];
        assert_int_equal(pn->present, PendingNotification_PR_profileInstallationResult);
        const ProfileInstallationResult_t *pir = &pn->choice.profileInstallationResult;
        const ProfileInstallationResultData_t *d = &pir->profileInstallationResultData;
        if (i == 0)
            seq = d->notificationMetadata.seqNumber;
        uint8_t txid[16], b10[10];
        memset(txid, 0x10 + i, sizeof txid);
        assert_int_equal(d->transactionId.size, 16);
        assert_memory_equal(d->transactionId.buf, txid, 16);
        assert_int_equal(sgp32_iccid_to_bytes(fx.iccid[i], b10, NULL), ESIM_OK);
        assert_non_null(d->notificationMetadata.iccid);
        assert_memory_equal(d->notificationMetadata.iccid->buf, b10, 10);
        assert_int_equal(d->finalResult.present,
                         ProfileInstallationResultData__finalResult_PR_successResult);
        esim_buf tbs = {0};
        assert_int_equal(sgp32_encode(&asn_DEF_ProfileInstallationResultData, d, &tbs, NULL),
                         ESIM_OK);
        assert_int_equal(sgp32_verify_rs(pub, tbs.data, tbs.len, pir->euiccSignPIR.buf, NULL),
                         ESIM_OK);
        esim_buf_free(&tbs);
    }
    sgp32_free(&asn_DEF_RetrieveNotificationsListResponse, n);
    /* The install's transactionId outlives a save and a load. */
    json_t *saved = sim_euicc_to_json(e);
    assert_non_null(saved);
    sim_euicc *again = NULL;
    assert_int_equal(sim_euicc_from_json(fx.pki, saved, &again, NULL), ESIM_OK);
    assert_memory_equal(sim_euicc_notification_at(again, 1)->transaction_id,
                        sim_euicc_notification_at(e, 1)->transaction_id, 16);
    sim_euicc_free(again);
    json_decref(saved);
    /* Any other event is an OtherSignedNotification, its metadata signed. */
    assert_int_equal(sim_euicc_enable(e, fx.iccid[1]), SIM_RES_OK);
    esim_buf_reset(&out);
    assert_int_equal(sim_euicc_es10(e, (const uint8_t *)"\xBF\x2B\x00", 3, &out, NULL), ESIM_OK);
    assert_int_equal(sgp32_decode_explicit(SGP32_TAG_NOTIFICATIONS_LIST,
                                           &asn_DEF_RetrieveNotificationsListResponse, out.data,
                                           out.len, (void **)&n, NULL),
                     ESIM_OK);
    assert_int_equal(n->choice.notificationList.list.count, 3);
    const PendingNotification_t *last = n->choice.notificationList.list.array[2];
    assert_int_equal(last->present, PendingNotification_PR_otherSignedNotification);
    const OtherSignedNotification_t *o = &last->choice.otherSignedNotification;
    esim_buf tbs = {0};
    assert_int_equal(
        sgp32_encode(&asn_DEF_NotificationMetadata, &o->tbsOtherNotification, &tbs, NULL), ESIM_OK);
    assert_int_equal(
        sgp32_verify_rs(pub, tbs.data, tbs.len, o->euiccNotificationSignature.buf, NULL), ESIM_OK);
    esim_buf_free(&tbs);
    EVP_PKEY_free(pub);
    X509_free(x);
    sgp32_free(&asn_DEF_RetrieveNotificationsListResponse, n);

    /* Through the card: over 256 bytes, so 61 00 and GET RESPONSE in parts. */
    sim_card *card = NULL;
    assert_int_equal(sim_card_new(e, &card, NULL), ESIM_OK);
    esim_buf apdu = {0}, rsp = {0}, all = {0};
    esim_hex_decode("00A4040010" SIM_ISDR_AID, &apdu, NULL);
    assert_int_equal(sim_card_apdu(card, apdu.data, apdu.len, &rsp, NULL), ESIM_OK);
    esim_buf_reset(&apdu);
    esim_buf_reset(&rsp);
    esim_hex_decode("80E2910003BF2B00", &apdu, NULL);
    assert_int_equal(sim_card_apdu(card, apdu.data, apdu.len, &rsp, NULL), ESIM_OK);
    assert_int_equal(rsp.len, 2);
    assert_memory_equal(rsp.data, "\x61\x00", 2);
    int rounds = 0;
    for (;;) {
        esim_buf_reset(&rsp);
        assert_int_equal(
            sim_card_apdu(card, (const uint8_t *)"\x00\xC0\x00\x00\x00", 5, &rsp, NULL), ESIM_OK);
        rounds++;
        esim_buf_append(&all, rsp.data, rsp.len - 2);
        if (rsp.data[rsp.len - 2] != 0x61)
            break;
    }
    assert_memory_equal(rsp.data + rsp.len - 2, "\x90\x00", 2);
    assert_true(rounds > 1);
    /* The same list (signed afresh: ECDSA signatures differ each time). */
    assert_int_equal(all.len, out.len);
    assert_int_equal(sgp32_decode_explicit(SGP32_TAG_NOTIFICATIONS_LIST,
                                           &asn_DEF_RetrieveNotificationsListResponse, all.data,
                                           all.len, (void **)&n, NULL),
                     ESIM_OK);
    assert_int_equal(n->choice.notificationList.list.count, 3);
    sgp32_free(&asn_DEF_RetrieveNotificationsListResponse, n);
    sim_card_free(card);
    esim_buf_free(&apdu);
    esim_buf_free(&rsp);
    esim_buf_free(&all);

    /* RemoveNotificationFromList (BF30): ok, then nothingToDelete. */
    for (int i = 0; i < 2; i++) {
        NotificationSentRequest_t *s = calloc(1, sizeof *s);
        s->seqNumber = seq;
        assert_int_equal(run(e, &asn_DEF_NotificationSentRequest, s, &out), ESIM_OK);
        NotificationSentResponse_t *a = NULL;
        assert_int_equal(
            sgp32_decode(&asn_DEF_NotificationSentResponse, out.data, out.len, (void **)&a, NULL),
            ESIM_OK);
        assert_int_equal(a->deleteNotificationStatus, i == 0 ? 0 : 1);
        sgp32_free(&asn_DEF_NotificationSentResponse, a);
    }
    assert_int_equal(sim_euicc_notification_count(e), 2);
    esim_buf_free(&out);
    sim_euicc_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_eid_and_certs),
        cmocka_unit_test(test_add_initial_eim_and_config),
        cmocka_unit_test(test_eim_cert_verified_by_each_euicc),
        cmocka_unit_test(test_package_enable_and_counter),
        cmocka_unit_test(test_package_bad_signature),
        cmocka_unit_test(test_ecos_and_persistence),
        cmocka_unit_test(test_profiles_and_notifications),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
