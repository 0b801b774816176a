/*
 * test_sgp32.c — sgp32/: round trips against known bytes (the "no package"
 * answer, a v1.0 GetEimPackageRequest, the enable+getRAT package shape of
 * the facts, AddInitialEim's EimConfigurationData), strict DER refusals,
 * the eimSignature / euiccSignEPR inputs and r‖s signatures with the test
 * PKI's eIM key, and the EID / ICCID codings.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/x509.h>

#include "sgp32/sgp32.h"

#define EID "89049032123451234512345678901235"
#define ICCID "8944476500001234567"

static const uint8_t eid_bytes[16] = {0x89, 0x04, 0x90, 0x32, 0x12, 0x34, 0x51, 0x23,
                                      0x45, 0x12, 0x34, 0x56, 0x78, 0x90, 0x12, 0x35};

static char tmpdir[64];

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_sgp32.XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmpdir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void hex_to(const char *hex, esim_buf *out)
{
    esim_buf_reset(out);
    assert_int_equal(esim_hex_decode(hex, out, NULL), ESIM_OK);
}

static void test_no_package_round_trip(void **state)
{
    (void)state;
    static const uint8_t want[] = {0xbf, 0x4f, 0x03, 0x02, 0x01, 0x01};
    esim_buf b = {0};
    assert_int_equal(sgp32_no_package(&b), ESIM_OK);
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);

    /* decodes as the bare response and as the ESipa message the IPA reads */
    GetEimPackageResponse_t *r = NULL;
    esim_error err = {{0}};
    assert_int_equal(
        sgp32_decode(&asn_DEF_GetEimPackageResponse, want, sizeof want, (void **)&r, &err),
        ESIM_OK);
    assert_int_equal(r->present, GetEimPackageResponse_PR_eimPackageError);
    assert_int_equal(r->choice.eimPackageError,
                     GetEimPackageResponse__eimPackageError_noEimPackageAvailable);
    sgp32_free(&asn_DEF_GetEimPackageResponse, r);
    EsipaMessageFromEimToIpa_t *m = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_EsipaMessageFromEimToIpa, want, sizeof want, (void **)&m, &err),
        ESIM_OK);
    assert_int_equal(m->present, EsipaMessageFromEimToIpa_PR_getEimPackageResponse);
    assert_int_equal(m->choice.getEimPackageResponse.choice.eimPackageError, 1);

    /* built by hand, it encodes to the same six bytes */
    esim_buf_reset(&b);
    assert_int_equal(sgp32_encode(&asn_DEF_EsipaMessageFromEimToIpa, m, &b, &err), ESIM_OK);
    assert_memory_equal(b.data, want, sizeof want);
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, m);
    esim_buf_free(&b);
}

static void test_get_package_request_v10(void **state)
{
    (void)state;
    esim_buf b = {0}, want = {0};
    esim_error err = {{0}};
    assert_int_equal(sgp32_get_package_request(EID, &b, &err), ESIM_OK);
    hex_to("bf4f125a10" EID, &want);
    assert_int_equal(b.len, want.len);
    assert_memory_equal(b.data, want.data, want.len);

    /* v1.0 tags: notifyStateChange [0], rPLMN [1] (v1.2 moved rPLMN to [2]) */
    hex_to("bf4f195a10" EID "8000810362f210", &want);
    EsipaMessageFromIpaToEim_t *m = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_EsipaMessageFromIpaToEim, want.data, want.len, (void **)&m, &err),
        ESIM_OK);
    assert_int_equal(m->present, EsipaMessageFromIpaToEim_PR_getEimPackageRequest);
    GetEimPackageRequest_t *g = &m->choice.getEimPackageRequest;
    char eid[33];
    assert_int_equal(sgp32_eid_from_bytes(g->eidValue.buf, g->eidValue.size, eid, &err), ESIM_OK);
    assert_string_equal(eid, EID);
    assert_non_null(g->notifyStateChange);
    assert_non_null(g->rPLMN);
    assert_int_equal(g->rPLMN->size, 3);
    esim_buf_reset(&b);
    assert_int_equal(sgp32_encode(&asn_DEF_EsipaMessageFromIpaToEim, m, &b, &err), ESIM_OK);
    assert_int_equal(b.len, want.len);
    assert_memory_equal(b.data, want.data, want.len);
    sgp32_free(&asn_DEF_EsipaMessageFromIpaToEim, m);

    /* a v1.2 request (stateChangeCause [1] INTEGER) is not v1.0 DER */
    hex_to("bf4f155a10" EID "810101", &want);
    assert_int_equal(
        sgp32_decode(&asn_DEF_EsipaMessageFromIpaToEim, want.data, want.len, (void **)&m, &err),
        ESIM_EINVAL);
    assert_null(m);
    esim_buf_free(&b);
    esim_buf_free(&want);
}

static void test_strict_der_refusals(void **state)
{
    (void)state;
    static const char *bad[] = {
        "bf4f8002010100",      /* indefinite length */
        "bf4f8103020101",      /* length not in its shortest form */
        "bf4f0302010100",      /* a byte after the message */
        "bf4f04020101",        /* length past the end */
        "bf4f0402020001",      /* INTEGER not in its shortest form */
        "bf4f",                /* cut short */
        "bf4f125a10" EID,      /* a request where a response belongs */
        "9f4f03020101",        /* primitive form of a constructed tag */
        "bf4f137a1104" EID "", /* (malformed) constructed eidValue */
    };
    esim_buf b = {0};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        hex_to(bad[i], &b);
        void *o = (void *)1;
        esim_error err = {{0}};
        esim_err rc = sgp32_decode(&asn_DEF_EsipaMessageFromEimToIpa, b.data, b.len, &o, &err);
        assert_int_not_equal(rc, ESIM_OK);
        assert_null(o);
        assert_true(strlen(err.msg) > 0);
    }
    /* a constructed (BER) eidValue in a request */
    hex_to("bf4f147a12"
           "0410" EID,
           &b);
    void *o = NULL;
    assert_int_equal(sgp32_decode(&asn_DEF_GetEimPackageRequest, b.data, b.len, &o, NULL),
                     ESIM_EINVAL);
    /* an eidValue of 15 bytes, twice: asn1c 0.9.28 forgot a constrained
     * alias's own check after the type's first use (sgp32/asn1c.cmake) */
    for (int k = 0; k < 2; k++) {
        hex_to("bf4f115a0f"
               "890490321234512345123456789012",
               &b);
        assert_int_equal(sgp32_decode(&asn_DEF_GetEimPackageRequest, b.data, b.len, &o, NULL),
                         ESIM_EINVAL);
        assert_null(o);
        hex_to("bf4f115a0f"
               "890490321234512345123456789012",
               &b);
        assert_int_equal(sgp32_decode(&asn_DEF_EsipaMessageFromIpaToEim, b.data, b.len, &o, NULL),
                         ESIM_EINVAL);
        hex_to("bf4f125a10" EID, &b);
        assert_int_equal(sgp32_decode(&asn_DEF_GetEimPackageRequest, b.data, b.len, &o, NULL),
                         ESIM_OK);
        sgp32_free(&asn_DEF_GetEimPackageRequest, o);
        o = NULL;
    }
    /* size limit */
    uint8_t *big = calloc(1, SGP32_DER_MAX + 1);
    assert_int_equal(sgp32_decode(&asn_DEF_GetEimPackageRequest, big, SGP32_DER_MAX + 1, &o, NULL),
                     ESIM_ETOOBIG);
    free(big);
    /* depth limit: 40 nested SEQUENCEs */
    esim_buf_reset(&b);
    for (int i = 0; i < 40; i++) {
        uint8_t hdr[2] = {0x30, (uint8_t)(2 * (39 - i))};
        esim_buf_append(&b, hdr, 2);
    }
    assert_int_equal(sgp32_decode(&asn_DEF_OpaqueSequence, b.data, b.len, &o, NULL), ESIM_ETOOBIG);
    esim_buf_free(&b);
}

/* The facts' enable(ICCID) + getRAT package, signed with |key|. */
static EuiccPackageRequest_t *enable_getrat_package(long counter)
{
    EuiccPackageRequest_t *req = calloc(1, sizeof *req);
    EuiccPackageSigned_t *s = &req->euiccPackageSigned;
    assert_int_equal(OCTET_STRING_fromString(&s->eimId, "eIM"), 0);
    assert_int_equal(OCTET_STRING_fromBuf(&s->eidValue, (const char *)eid_bytes, 16), 0);
    s->counterValue = counter;
    s->euiccPackage.present = EuiccPackage_PR_psmoList;
    Psmo_t *enable = calloc(1, sizeof *enable), *getrat = calloc(1, sizeof *getrat);
    uint8_t iccid[10];
    assert_int_equal(sgp32_iccid_to_bytes(ICCID, iccid, NULL), ESIM_OK);
    enable->present = Psmo_PR_enable;
    assert_int_equal(OCTET_STRING_fromBuf(&enable->choice.enable.iccid, (const char *)iccid, 10),
                     0);
    getrat->present = Psmo_PR_getRAT;
    assert_int_equal(ASN_SEQUENCE_ADD(&s->euiccPackage.choice.psmoList.list, enable), 0);
    assert_int_equal(ASN_SEQUENCE_ADD(&s->euiccPackage.choice.psmoList.list, getrat), 0);
    return req;
}

static void load_eim(esim_cert *eim)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/pki", tmpdir);
    esim_error err = {{0}};
    if (access(dir, F_OK) != 0)
        assert_int_equal(esim_pki_create(dir, &err), ESIM_OK);
    assert_int_equal(esim_pki_load(dir, "eim", eim, &err), ESIM_OK);
}

static void test_enable_getrat_package_shape_and_signature(void **state)
{
    (void)state;
    esim_cert eim = {0};
    load_eim(&eim);
    char group[32];
    size_t glen;
    assert_int_equal(EVP_PKEY_get_utf8_string_param(eim.key, "group", group, sizeof group, &glen),
                     1);
    assert_string_equal(group, "prime256v1");

    EuiccPackageRequest_t *req = enable_getrat_package(2);
    esim_error err = {{0}};
    long token = 7;
    assert_int_equal(sgp32_package_sign(req, eim.key, &token, &err), ESIM_OK);
    assert_int_equal(req->eimSignature.size, 64);

    /* wrapped in GetEimPackageResponse, as the eIM answers a poll */
    GetEimPackageResponse_t resp = {.present = GetEimPackageResponse_PR_euiccPackageRequest};
    resp.choice.euiccPackageRequest = *req;
    esim_buf b = {0}, want = {0};
    assert_int_equal(sgp32_encode(&asn_DEF_GetEimPackageResponse, &resp, &b, &err), ESIM_OK);
    hex_to("bf4f74bf5171302c800365494d5a10" EID "810102a010a30c5a0a984474560000214365f7a6005f3740",
           &want);
    assert_int_equal(b.len, want.len + 64);
    assert_memory_equal(b.data, want.data, want.len);
    assert_memory_equal(b.data + want.len, req->eimSignature.buf, 64);

    /* the eUICC's view: BF51 decodes, the signature holds with the token */
    EuiccPackageRequest_t *got = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_EuiccPackageRequest, b.data + 3, b.len - 3, (void **)&got, &err),
        ESIM_OK);
    assert_int_equal(got->euiccPackageSigned.counterValue, 2);
    Psmo_t *p0 = got->euiccPackageSigned.euiccPackage.choice.psmoList.list.array[0];
    char iccid[21];
    assert_int_equal(sgp32_iccid_from_bytes(p0->choice.enable.iccid.buf,
                                            p0->choice.enable.iccid.size, iccid, &err),
                     ESIM_OK);
    assert_string_equal(iccid, ICCID);
    EVP_PKEY *pub = X509_get0_pubkey(eim.x509);
    assert_int_equal(sgp32_package_verify(got, pub, &token, &err), ESIM_OK);
    long other = 8;
    assert_int_equal(sgp32_package_verify(got, pub, &other, &err), ESIM_ECRYPTO);
    assert_int_equal(sgp32_package_verify(got, pub, NULL, &err), ESIM_ECRYPTO);
    got->euiccPackageSigned.counterValue = 3; /* tampered */
    assert_int_equal(sgp32_package_verify(got, pub, &token, &err), ESIM_ECRYPTO);

    /* the signed input is DER(EuiccPackageSigned) || 84 01 07 */
    esim_buf in = {0};
    assert_int_equal(sgp32_eim_signature_input(&req->euiccPackageSigned, &token, &in, &err),
                     ESIM_OK);
    assert_int_equal(in.len, 0x2e + 3);
    assert_memory_equal(in.data + 0x2e, "\x84\x01\x07", 3);
    esim_buf_reset(&in);
    assert_int_equal(sgp32_append_int_tlv(0x84, 128, &in), ESIM_OK);
    assert_memory_equal(in.data, "\x84\x02\x00\x80", 4);

    sgp32_free(&asn_DEF_EuiccPackageRequest, got);
    sgp32_free(&asn_DEF_EuiccPackageRequest, req);
    esim_buf_free(&in);
    esim_buf_free(&b);
    esim_buf_free(&want);
    esim_cert_clear(&eim);
}

static void test_result_signature_epr_and_epe(void **state)
{
    (void)state;
    esim_cert eim = {0};
    load_eim(&eim);
    EVP_PKEY *euicc = EVP_EC_gen("P-256");
    assert_non_null(euicc);
    uint8_t eim_sig[64];
    memset(eim_sig, 0xab, sizeof eim_sig);
    esim_error err = {{0}};

    /* EuiccPackageResultSigned: enable ok, getRAT (empty table) */
    ProvideEimPackageResult_t res = {.present = ProvideEimPackageResult_PR_euiccPackageResult};
    EuiccPackageResult_t *r = &res.choice.euiccPackageResult;
    r->present = EuiccPackageResult_PR_euiccPackageResultSigned;
    EuiccPackageResultDataSigned_t *d =
        &r->choice.euiccPackageResultSigned.euiccPackageResultDataSigned;
    assert_int_equal(OCTET_STRING_fromString(&d->eimId, "eIM"), 0);
    d->counterValue = 2;
    d->seqNumber = 5;
    EuiccResultData_t *e1 = calloc(1, sizeof *e1), *e2 = calloc(1, sizeof *e2);
    e1->present = EuiccResultData_PR_enableResult;
    e1->choice.enableResult = EuiccResultData__enableResult_ok;
    e2->present = EuiccResultData_PR_getRATResult;
    ASN_SEQUENCE_ADD(&d->euiccResult.list, e1);
    ASN_SEQUENCE_ADD(&d->euiccResult.list, e2);
    assert_int_equal(sgp32_result_sign(r, euicc, eim_sig, 64, &err), ESIM_OK);

    /* euiccSignEPR input: DER(data) || 5F37 40 eimSignature */
    esim_buf in = {0}, b = {0};
    assert_int_equal(sgp32_euicc_sign_epr_input(d, eim_sig, 64, &in, &err), ESIM_OK);
    assert_memory_equal(in.data + in.len - 67, "\x5f\x37\x40", 3);

    /* on the wire: BF50 BF51 A0 ... as ProvideEimPackageResult inside ESipa */
    EsipaMessageFromIpaToEim_t msg = {.present =
                                          EsipaMessageFromIpaToEim_PR_provideEimPackageResult};
    msg.choice.provideEimPackageResult = res;
    assert_int_equal(sgp32_encode(&asn_DEF_EsipaMessageFromIpaToEim, &msg, &b, &err), ESIM_OK);
    assert_memory_equal(b.data, "\xbf\x50", 2);
    assert_memory_equal(b.data + 3, "\xbf\x51", 2);
    assert_int_equal(b.data[6], 0xa0);
    EsipaMessageFromIpaToEim_t *got = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_EsipaMessageFromIpaToEim, b.data, b.len, (void **)&got, &err),
        ESIM_OK);
    EuiccPackageResult_t *gr = &got->choice.provideEimPackageResult.choice.euiccPackageResult;
    assert_int_equal(sgp32_result_verify(gr, euicc, eim_sig, 64, &err), ESIM_OK);
    eim_sig[0] ^= 1; /* the result of another request */
    assert_int_equal(sgp32_result_verify(gr, euicc, eim_sig, 64, &err), ESIM_ECRYPTO);
    eim_sig[0] ^= 1;
    assert_int_equal(sgp32_result_verify(gr, X509_get0_pubkey(eim.x509), eim_sig, 64, &err),
                     ESIM_ECRYPTO);
    sgp32_free(&asn_DEF_EsipaMessageFromIpaToEim, got);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_ProvideEimPackageResult, &res);

    /* EuiccPackageErrorSigned: replayError */
    EuiccPackageResult_t epe = {.present = EuiccPackageResult_PR_euiccPackageErrorSigned};
    EuiccPackageErrorDataSigned_t *ed =
        &epe.choice.euiccPackageErrorSigned.euiccPackageErrorDataSigned;
    assert_int_equal(OCTET_STRING_fromString(&ed->eimId, "eIM"), 0);
    ed->counterValue = 2;
    ed->euiccPackageErrorCode = EuiccPackageErrorDataSigned__euiccPackageErrorCode_replayError;
    assert_int_equal(sgp32_result_sign(&epe, euicc, eim_sig, 64, &err), ESIM_OK);
    assert_int_equal(sgp32_result_verify(&epe, euicc, eim_sig, 64, &err), ESIM_OK);
    esim_buf_reset(&in);
    assert_int_equal(sgp32_euicc_sign_epe_input(ed, eim_sig, 64, &in, &err), ESIM_OK);
    esim_buf_reset(&b);
    assert_int_equal(
        sgp32_encode_explicit(SGP32_TAG_EUICC_PACKAGE, &asn_DEF_EuiccPackageResult, &epe, &b, &err),
        ESIM_OK);
    assert_memory_equal(b.data, "\xbf\x51", 2);
    EuiccPackageResult_t *eback = NULL;
    assert_int_equal(sgp32_decode_explicit(SGP32_TAG_EUICC_PACKAGE, &asn_DEF_EuiccPackageResult,
                                           b.data, b.len, (void **)&eback, &err),
                     ESIM_OK);
    assert_int_equal(sgp32_result_verify(eback, euicc, eim_sig, 64, &err), ESIM_OK);
    sgp32_free(&asn_DEF_EuiccPackageResult, eback);
    assert_int_equal(sgp32_decode_explicit(SGP32_TAG_NOTIFICATIONS_LIST,
                                           &asn_DEF_EuiccPackageResult, b.data, b.len,
                                           (void **)&eback, &err),
                     ESIM_EINVAL);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EuiccPackageResult, &epe);

    /* an unsigned error has nothing to sign */
    EuiccPackageResult_t unsig = {.present = EuiccPackageResult_PR_euiccPackageErrorUnsigned};
    assert_int_equal(sgp32_result_sign(&unsig, euicc, eim_sig, 64, &err), ESIM_EINVAL);

    /* a bad r||s never verifies; a non-P-256 key is refused */
    uint8_t zero[64] = {0};
    assert_int_equal(sgp32_verify_rs(euicc, (const uint8_t *)"x", 1, zero, &err), ESIM_ECRYPTO);
    EVP_PKEY *rsa = EVP_RSA_gen(1024);
    uint8_t sig[64];
    assert_int_equal(sgp32_sign_rs(rsa, (const uint8_t *)"x", 1, sig, &err), ESIM_ECRYPTO);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(euicc);
    esim_buf_free(&in);
    esim_buf_free(&b);
    esim_cert_clear(&eim);
}

static void test_add_initial_eim_with_public_key(void **state)
{
    (void)state;
    esim_cert eim = {0};
    load_eim(&eim);
    /* the eIM's SubjectPublicKeyInfo, opaque to us but carried byte for byte */
    unsigned char *spki = NULL;
    int spki_len = i2d_PUBKEY(eim.key, &spki);
    assert_int_equal(spki_len, 91);
    SubjectPublicKeyInfo_t *pk = NULL;
    esim_error err = {{0}};
    assert_int_equal(
        sgp32_decode(&asn_DEF_SubjectPublicKeyInfo, spki, (size_t)spki_len, (void **)&pk, &err),
        ESIM_OK);

    AddInitialEimRequest_t *req = calloc(1, sizeof *req);
    EimConfigurationData_t *c = calloc(1, sizeof *c);
    assert_int_equal(OCTET_STRING_fromString(&c->eimId, "eIM"), 0);
    c->eimFqdn = OCTET_STRING_new_fromBuf(&asn_DEF_UTF8String, "127.0.0.1:8000", -1);
    c->counterValue = calloc(1, sizeof(long));
    *c->counterValue = 1;
    c->associationToken = calloc(1, sizeof(long));
    *c->associationToken = -1;
    c->eimPublicKeyData = calloc(1, sizeof *c->eimPublicKeyData);
    c->eimPublicKeyData->present = EimConfigurationData__eimPublicKeyData_PR_eimPublicKey;
    c->eimPublicKeyData->choice.eimPublicKey = *pk;
    free(pk);
    ASN_SEQUENCE_ADD(&req->eimConfigurationDataList.list, c);

    /* the shape of onomondo-ipa's sample: BF57 7C A0 7A 30 78 80 03 "eIM"
     * 81 0E "127.0.0.1:8000" 83 01 01 84 01 FF A5 5B A0 59 <SPKI body> */
    esim_buf b = {0}, want = {0};
    assert_int_equal(sgp32_encode(&asn_DEF_AddInitialEimRequest, req, &b, &err), ESIM_OK);
    hex_to("bf577ca07a3078800365494d810e3132372e302e302e313a38303030830101"
           "8401ffa55ba059",
           &want);
    assert_int_equal(b.len, want.len + 89);
    assert_memory_equal(b.data, want.data, want.len);
    assert_memory_equal(b.data + want.len, spki + 2, 89);

    AddInitialEimRequest_t *back = NULL;
    assert_int_equal(
        sgp32_decode(&asn_DEF_AddInitialEimRequest, b.data, b.len, (void **)&back, &err), ESIM_OK);
    EimConfigurationData_t *bc = back->eimConfigurationDataList.list.array[0];
    assert_int_equal(*bc->associationToken, -1);
    esim_buf key = {0};
    assert_int_equal(sgp32_encode(&asn_DEF_SubjectPublicKeyInfo,
                                  &bc->eimPublicKeyData->choice.eimPublicKey, &key, &err),
                     ESIM_OK);
    assert_int_equal(key.len, (size_t)spki_len);
    assert_memory_equal(key.data, spki, key.len);

    sgp32_free(&asn_DEF_AddInitialEimRequest, back);
    sgp32_free(&asn_DEF_AddInitialEimRequest, req);
    OPENSSL_free(spki);
    esim_buf_free(&key);
    esim_buf_free(&b);
    esim_buf_free(&want);
    esim_cert_clear(&eim);
}

static void test_es10_messages(void **state)
{
    (void)state;
    esim_buf b = {0};
    esim_error err = {{0}};
    void *o = NULL;
    /* GetEID, GetEimConfigurationData, RetrieveNotificationsList,
     * GetProfilesInfo, RemoveNotificationFromList: the IPA's requests */
    struct {
        const asn_TYPE_descriptor_t *td;
        const char *hex;
    } ok[] = {
        {&asn_DEF_GetEuiccDataRequest, "bf3e035c015a"},
        {&asn_DEF_GetEuiccDataResponse, "bf3e125a10" EID},
        {&asn_DEF_GetEimConfigurationDataRequest, "bf5500"},
        {&asn_DEF_RetrieveNotificationsListRequest, "bf2b00"},
        {&asn_DEF_ProfileInfoListRequest, "bf2d00"},
        {&asn_DEF_NotificationSentRequest, "bf3003800105"},
        {&asn_DEF_NotificationSentResponse, "bf3003800100"},
        {&asn_DEF_GetCertsRequest, "bf5600"},
        {&asn_DEF_ProfileInfoListResponse, "bf2d14a012e3105a0a984474560000214365f79f700101"},
        {&asn_DEF_EsipaMessageFromEimToIpa, "bf5003bf5300"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        hex_to(ok[i].hex, &b);
        esim_err rc = sgp32_decode(ok[i].td, b.data, b.len, &o, &err);
        if (rc != ESIM_OK)
            fail_msg("%s: %s", ok[i].hex, err.msg);
        esim_buf again = {0};
        assert_int_equal(sgp32_encode(ok[i].td, o, &again, &err), ESIM_OK);
        assert_int_equal(again.len, b.len);
        assert_memory_equal(again.data, b.data, b.len);
        esim_buf_free(&again);
        sgp32_free(ok[i].td, o);
    }
    /* BF2B around the CHOICE: an empty notification list */
    hex_to("bf2b02a000", &b);
    assert_int_equal(sgp32_decode_explicit(SGP32_TAG_NOTIFICATIONS_LIST,
                                           &asn_DEF_RetrieveNotificationsListResponse, b.data,
                                           b.len, &o, &err),
                     ESIM_OK);
    RetrieveNotificationsListResponse_t *nl = o;
    assert_int_equal(nl->present, RetrieveNotificationsListResponse_PR_notificationList);
    esim_buf again = {0};
    assert_int_equal(sgp32_encode_explicit(SGP32_TAG_NOTIFICATIONS_LIST,
                                           &asn_DEF_RetrieveNotificationsListResponse, nl, &again,
                                           &err),
                     ESIM_OK);
    assert_int_equal(again.len, b.len);
    assert_memory_equal(again.data, b.data, b.len);
    sgp32_free(&asn_DEF_RetrieveNotificationsListResponse, nl);
    esim_buf_free(&again);
    esim_buf_free(&b);
}

static void test_identifiers(void **state)
{
    (void)state;
    uint8_t e[16], ic[10];
    char back[33], iback[21];
    assert_int_equal(sgp32_eid_to_bytes(EID, e, NULL), ESIM_OK);
    assert_memory_equal(e, eid_bytes, 16);
    assert_int_equal(sgp32_eid_from_bytes(e, 16, back, NULL), ESIM_OK);
    assert_string_equal(back, EID);
    assert_int_equal(sgp32_eid_to_bytes("1234", e, NULL), ESIM_EINVAL);
    e[3] = 0xfa;
    assert_int_equal(sgp32_eid_from_bytes(e, 16, back, NULL), ESIM_EINVAL);

    /* EF.ICCID coding: 89 44 47 ... -> 98 44 74 ..., F padding */
    assert_int_equal(sgp32_iccid_to_bytes(ICCID, ic, NULL), ESIM_OK);
    assert_memory_equal(ic, "\x98\x44\x74\x56\x00\x00\x21\x43\x65\xf7", 10);
    assert_int_equal(sgp32_iccid_from_bytes(ic, 10, iback, NULL), ESIM_OK);
    assert_string_equal(iback, ICCID);
    assert_int_equal(sgp32_iccid_to_bytes("89x4", ic, NULL), ESIM_EINVAL);
    ic[0] = 0xaa;
    assert_int_equal(sgp32_iccid_from_bytes(ic, 10, iback, NULL), ESIM_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_package_round_trip),
        cmocka_unit_test(test_get_package_request_v10),
        cmocka_unit_test(test_strict_der_refusals),
        cmocka_unit_test(test_enable_getrat_package_shape_and_signature),
        cmocka_unit_test(test_result_signature_epr_and_epe),
        cmocka_unit_test(test_add_initial_eim_with_public_key),
        cmocka_unit_test(test_es10_messages),
        cmocka_unit_test(test_identifiers),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
