/*
 * fuzz_esipa.c — the checks the esipa_* fuzz targets share (fuzz_esipa.h).
 * Anything sgp32_decode() accepts must be canonical (re-encoding gives the
 * input back byte for byte) and safe to walk the way the eIM walks it.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "fuzz_esipa.h"

/* Re-encoding an accepted value gives the input back. */
static void same_again(const asn_TYPE_descriptor_t *td, const void *obj, const uint8_t *data,
                       size_t size)
{
    esim_buf b = {0};
    if (sgp32_encode(td, obj, &b, NULL) != ESIM_OK || b.len != size ||
        memcmp(b.data, data, size) != 0)
        abort();
    esim_buf_free(&b);
}

/* A nested value the eIM re-encodes (to relay it, or to check a signature
 * over it) must encode. */
static void encodes(const asn_TYPE_descriptor_t *td, const void *obj)
{
    esim_buf b = {0};
    if (sgp32_encode(td, obj, &b, NULL) != ESIM_OK || b.len == 0)
        abort();
    esim_buf_free(&b);
}

static void walk_result(const EuiccPackageResult_t *r)
{
    static EVP_PKEY *key;
    if (!key)
        key = EVP_EC_gen("P-256");
    uint8_t eim_sig[SGP32_SIG_LEN] = {0};
    esim_err rc = sgp32_result_verify(r, key, eim_sig, sizeof eim_sig, NULL);
    if (rc == ESIM_OK)
        abort(); /* nobody can sign with a key made in this process */
    if (r->present == EuiccPackageResult_PR_euiccPackageResultSigned) {
        const EuiccPackageResultDataSigned_t *d =
            &r->choice.euiccPackageResultSigned.euiccPackageResultDataSigned;
        esim_buf in = {0};
        if (sgp32_euicc_sign_epr_input(d, eim_sig, sizeof eim_sig, &in, NULL) != ESIM_OK)
            abort();
        esim_buf_free(&in);
        for (int i = 0; i < d->euiccResult.list.count; i++)
            encodes(&asn_DEF_EuiccResultData, d->euiccResult.list.array[i]);
    }
}

static void walk_certificate(const Certificate_t *c)
{
    esim_buf b = {0};
    if (sgp32_encode(&asn_DEF_Certificate, c, &b, NULL) != ESIM_OK)
        abort();
    const unsigned char *p = b.data;
    X509 *x = d2i_X509(NULL, &p, (long)b.len);
    X509_free(x);
    esim_buf_free(&b);
}

static void walk_provide(const ProvideEimPackageResult_t *p)
{
    switch (p->present) {
    case ProvideEimPackageResult_PR_euiccPackageResult:
        walk_result(&p->choice.euiccPackageResult);
        break;
    case ProvideEimPackageResult_PR_ePRAndNotifications:
        walk_result(&p->choice.ePRAndNotifications.euiccPackageResult);
        break;
    case ProvideEimPackageResult_PR_ipaEuiccDataResponse:
        if (p->choice.ipaEuiccDataResponse.present == IpaEuiccDataResponse_PR_ipaEuiccData) {
            const IpaEuiccData_t *d = &p->choice.ipaEuiccDataResponse.choice.ipaEuiccData;
            if (d->euiccCertificate)
                walk_certificate(d->euiccCertificate);
            if (d->eumCertificate)
                walk_certificate(d->eumCertificate);
        }
        break;
    default:
        break;
    }
}

static void walk(const EsipaMessageFromIpaToEim_t *m)
{
    char eid[33];
    switch (m->present) {
    case EsipaMessageFromIpaToEim_PR_getEimPackageRequest: {
        const GetEimPackageRequest_t *g = &m->choice.getEimPackageRequest;
        if (g->eidValue.size != 16)
            abort(); /* Octet16 is a constraint of the module */
        sgp32_eid_from_bytes(g->eidValue.buf, g->eidValue.size, eid, NULL);
        break;
    }
    case EsipaMessageFromIpaToEim_PR_provideEimPackageResult:
        walk_provide(&m->choice.provideEimPackageResult);
        break;
    case EsipaMessageFromIpaToEim_PR_handleNotificationEsipa:
        if (m->choice.handleNotificationEsipa.present ==
            HandleNotificationEsipa_PR_provideEimPackageResult)
            walk_provide(&m->choice.handleNotificationEsipa.choice.provideEimPackageResult);
        break;
    case EsipaMessageFromIpaToEim_PR_authenticateClientRequestEsipa:
        /* relayed to the SM-DP+ as the TLV inside BF38 */
        encodes(&asn_DEF_OpaqueTlv,
                &m->choice.authenticateClientRequestEsipa.authenticateServerResponse);
        break;
    case EsipaMessageFromIpaToEim_PR_getBoundProfilePackageRequestEsipa:
        encodes(&asn_DEF_OpaqueTlv,
                &m->choice.getBoundProfilePackageRequestEsipa.prepareDownloadResponse);
        break;
    case EsipaMessageFromIpaToEim_PR_initiateAuthenticationRequestEsipa:
        if (m->choice.initiateAuthenticationRequestEsipa.euiccInfo1)
            encodes(&asn_DEF_EUICCInfo1, m->choice.initiateAuthenticationRequestEsipa.euiccInfo1);
        break;
    default:
        break;
    }
}

void fuzz_esipa_one(const asn_TYPE_descriptor_t *td, const uint8_t *data, size_t size)
{
    void *obj = NULL;
    if (sgp32_decode(&asn_DEF_EsipaMessageFromIpaToEim, data, size, &obj, NULL) == ESIM_OK) {
        same_again(&asn_DEF_EsipaMessageFromIpaToEim, obj, data, size);
        walk(obj);
        sgp32_free(&asn_DEF_EsipaMessageFromIpaToEim, obj);
    } else if (obj) {
        abort(); /* a refusal leaves nothing behind */
    }
    if (td && sgp32_decode(td, data, size, &obj, NULL) == ESIM_OK) {
        same_again(td, obj, data, size);
        sgp32_free(td, obj);
    }
}
