/*
 * es10.c — the virtual eUICC's ES10 entry point (SGP.22 ES10c, SGP.32
 * ES10b) by DER: one function takes a request as an IPA or LPA sends it in
 * STORE DATA and gives the eUICC's answer. The eIM side of SGP.32 lives here:
 * AddInitialEim, the eIM configuration, and LoadEuiccPackage, which checks
 * the eIM's signature and counter, runs the PSMOs and eCOs and signs the
 * result with the eUICC's key. All DER goes through the sgp32/ layer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "EUICCInfo2Sgp22.h"
#include "EuiccConfiguredAddressesRequest.h"
#include "EuiccConfiguredAddressesResponse.h"
#include "GetEuiccInfo2Request.h"
#include "GetRatRequest.h"
#include "GetRatResponse.h"
#include "sgp32/sgp32.h"
#include "sim/sim_internal.h"

/* A counter more than this far above the last accepted one is refused
 * (counterValueOutOfRange): a jump that large is no eIM's honest counter. */
#define SIM_COUNTER_WINDOW 1000000

/* ---- small helpers over the asn1c structures ------------------------------ */

/* The UTF8String/OCTET STRING |o| as a C string in |out|; false when it is
 * longer than |cap| - 1 or holds a NUL. */
static bool str_copy(const OCTET_STRING_t *o, char *out, size_t cap)
{
    if (!o || (size_t)o->size >= cap || (o->size && memchr(o->buf, 0, (size_t)o->size)))
        return false;
    if (o->size)
        memcpy(out, o->buf, (size_t)o->size);
    out[o->size] = '\0';
    return true;
}

static bool str_set(OCTET_STRING_t *o, const void *data, size_t len)
{
    return OCTET_STRING_fromBuf(o, (const char *)data, (int)len) == 0;
}

static OCTET_STRING_t *str_new(const void *data, size_t len)
{
    OCTET_STRING_t *o = calloc(1, sizeof *o);
    if (o && !str_set(o, data, len)) {
        free(o);
        return NULL;
    }
    return o;
}

static long *long_new(long v)
{
    long *p = malloc(sizeof *p);
    if (p)
        *p = v;
    return p;
}

/* A BIT STRING of named bits |bits| (bit 0 = the first, MSB), the trailing
 * zero bits left out as DER wants. */
static bool bits_set(BIT_STRING_t *b, unsigned bits)
{
    int top = -1;
    for (int i = 0; i < 8; i++)
        if (bits & (1u << i))
            top = i;
    uint8_t byte = 0;
    for (int i = 0; i <= top; i++)
        if (bits & (1u << i))
            byte |= (uint8_t)(0x80u >> i);
    if (top < 0)
        return true;
    if (!(b->buf = malloc(1)))
        return false;
    b->buf[0] = byte;
    b->size = 1;
    b->bits_unused = 7 - top;
    return true;
}

static unsigned bits_get(const BIT_STRING_t *b)
{
    unsigned v = 0;
    for (int i = 0; b && b->size >= 1 && i < 8; i++)
        if (b->buf[0] & (0x80u >> i))
            v |= 1u << i;
    return v;
}

/* Moves the DER certificate |der| into |dst| (kept opaque by the module). */
static esim_err cert_set(Certificate_t *dst, const esim_buf *der, esim_error *err)
{
    void *tmp = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_Certificate, der->data, der->len, &tmp, err);
    if (rc != ESIM_OK)
        return rc;
    *dst = *(Certificate_t *)tmp;
    free(tmp);
    return ESIM_OK;
}

/* Encodes |obj| of type |td| into |out| and frees it. */
static esim_err answer(const asn_TYPE_descriptor_t *td, void *obj, esim_buf *out, esim_error *err)
{
    esim_err rc = sgp32_encode(td, obj, out, err);
    sgp32_free(td, obj);
    return rc;
}

static esim_err bad(esim_err rc, esim_error *err, const char *what)
{
    if (rc == ESIM_ENOMEM)
        return esim_fail(err, rc, "out of memory");
    /* |err| already says what sgp32_decode found; name the request too. */
    if (err) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        return esim_fail(err, ESIM_EINVAL, "%s: %s", what, why);
    }
    return ESIM_EINVAL;
}

/* ---- GetEID, GetCerts ---------------------------------------------------------- */

static esim_err get_eid(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                        esim_error *err)
{
    GetEuiccDataRequest_t *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_GetEuiccDataRequest, req, len, (void **)&q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "GetEuiccData");
    bool eid_asked = q->tagList.size == 1 && q->tagList.buf[0] == 0x5A;
    sgp32_free(&asn_DEF_GetEuiccDataRequest, q);
    if (!eid_asked)
        return esim_fail(err, ESIM_EINVAL, "GetEuiccData: only tagList 5A (the EID) is known");
    uint8_t eid[16];
    if ((rc = sgp32_eid_to_bytes(sim_euicc_eid(e), eid, err)) != ESIM_OK)
        return rc;
    GetEuiccDataResponse_t *a = calloc(1, sizeof *a);
    if (!a || !str_set(&a->eidValue, eid, sizeof eid)) {
        sgp32_free(&asn_DEF_GetEuiccDataResponse, a);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    return answer(&asn_DEF_GetEuiccDataResponse, a, out, err);
}

static esim_err get_certs(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                          esim_error *err)
{
    GetCertsRequest_t *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_GetCertsRequest, req, len, (void **)&q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "GetCerts");
    sgp32_free(&asn_DEF_GetCertsRequest, q); /* one CI: euiccCiPKId chooses nothing */
    const esim_buf *euicc, *eum;
    if ((rc = sim_euicc_cert_der(e, &euicc, &eum, err)) != ESIM_OK)
        return rc;
    GetCertsResponse_t *a = calloc(1, sizeof *a);
    if (!a)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    a->present = GetCertsResponse_PR_certs;
    rc = cert_set(&a->choice.certs.eumCertificate, eum, err);
    if (rc == ESIM_OK)
        rc = cert_set(&a->choice.certs.euiccCertificate, euicc, err);
    if (rc != ESIM_OK) {
        sgp32_free(&asn_DEF_GetCertsResponse, a);
        return rc;
    }
    return answer(&asn_DEF_GetCertsResponse, a, out, err);
}

/* ---- chip information: EUICCInfo2, configured addresses, RAT ------------------ */

/* The root SM-DS every eUICC is configured with (SGP.22 §3.4). */
#define SIM_ROOT_SMDS "lpa.ds.gsma.com"

static bool version_set(OCTET_STRING_t *o, uint8_t a, uint8_t b, uint8_t c)
{
    uint8_t v[3] = {a, b, c};
    return str_set(o, v, sizeof v);
}

/* ES10c GetEUICCInfo2: what this virtual eUICC is, in SGP.22 v2.2 terms. */
static esim_err euicc_info2(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                            esim_error *err)
{
    void *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_GetEuiccInfo2Request, req, len, &q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "GetEUICCInfo2");
    sgp32_free(&asn_DEF_GetEuiccInfo2Request, q);
    EUICCInfo2Sgp22_t *a = calloc(1, sizeof *a);
    if (!a)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    /* extCardResource: installed applications (81), free NVM (82), free RAM (83). */
    size_t free_slots = SIM_MAX_PROFILES - sim_euicc_profile_count(e);
    uint8_t res[] = {0x81, 0x01, (uint8_t)sim_euicc_profile_count(e),
                     0x82, 0x03, (uint8_t)(free_slots * 2),
                     0x00, 0x00, 0x83,
                     0x02, 0x10, 0x00};
    bool ok =
        version_set(&a->profileVersion, 2, 3, 1) && version_set(&a->svn, 2, 2, 2) &&
        version_set(&a->euiccFirmwareVer, 1, 0, 0) && version_set(&a->ppVersion, 1, 0, 0) &&
        str_set(&a->extCardResource, res, sizeof res) && /* usimSupport, isimSupport, akaMilenage */
        bits_set(&a->uiccCapability, 1u << 1 | 1u << 2 | 1u << 4) &&
        bits_set(&a->rspCapability, 1u << 0 | 1u << 3) && /* additionalProfile, test */
        str_set(&a->sasAcreditationNumber, "esim-mdm-sim", 12) &&
        (a->euiccCategory = long_new(1)) != NULL;
    /* The CI it trusts, for verifying and for signing: the test CI's key id. */
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(sim_euicc_trusted_ci(e));
    for (int i = 0; ok && ski && i < 2; i++) {
        OCTET_STRING_t *id = str_new(ASN1_STRING_get0_data(ski), (size_t)ASN1_STRING_length(ski));
        void *list = i == 0 ? (void *)&a->euiccCiPKIdListForVerification.list
                            : (void *)&a->euiccCiPKIdListForSigning.list;
        if (!id || ASN_SEQUENCE_ADD(list, id) != 0) {
            sgp32_free(&asn_DEF_SubjectKeyIdentifier, id);
            ok = false;
        }
    }
    if (!ok) {
        sgp32_free(&asn_DEF_EUICCInfo2Sgp22, a);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    return answer(&asn_DEF_EUICCInfo2Sgp22, a, out, err);
}

static esim_err configured_addresses(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                                     esim_error *err)
{
    void *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_EuiccConfiguredAddressesRequest, req, len, &q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "EuiccConfiguredAddresses");
    sgp32_free(&asn_DEF_EuiccConfiguredAddressesRequest, q);
    EuiccConfiguredAddressesResponse_t *a = calloc(1, sizeof *a);
    const char *dp = sim_euicc_auto_enable_smdp(e);
    if (!a || !str_set(&a->rootDsAddress, SIM_ROOT_SMDS, strlen(SIM_ROOT_SMDS)) ||
        (dp[0] && !(a->defaultDpAddress = str_new(dp, strlen(dp))))) {
        sgp32_free(&asn_DEF_EuiccConfiguredAddressesResponse, a);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    return answer(&asn_DEF_EuiccConfiguredAddressesResponse, a, out, err);
}

static esim_err get_rat(const uint8_t *req, size_t len, esim_buf *out, esim_error *err)
{
    void *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_GetRatRequest, req, len, &q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "GetRAT");
    sgp32_free(&asn_DEF_GetRatRequest, q);
    GetRatResponse_t *a = calloc(1, sizeof *a); /* no rule authorised: an empty RAT */
    if (!a)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    return answer(&asn_DEF_GetRatResponse, a, out, err);
}

/* ---- eIM configuration ----------------------------------------------------------- */

/* The state's form of an EimConfigurationData; m->key_der is the caller's.
 * ESIM_EINVAL (|err| says why) for a config the eUICC cannot keep. */
static esim_err eim_from_config(const sim_euicc *e, const EimConfigurationData_t *c,
                                sim_eim_info *m, esim_error *err)
{
    memset(m, 0, sizeof *m);
    if (!str_copy(&c->eimId, m->eim_id, sizeof m->eim_id) || !m->eim_id[0])
        return esim_fail(err, ESIM_EINVAL, "eimId empty or over %d bytes", SIM_EIM_ID_MAX);
    if (c->eimFqdn && !str_copy(c->eimFqdn, m->fqdn, sizeof m->fqdn))
        return esim_fail(err, ESIM_EINVAL, "eimFqdn of %s is too long", m->eim_id);
    if (c->eimIdType && (*c->eimIdType < 1 || *c->eimIdType > 3))
        return esim_fail(err, ESIM_EINVAL, "eimIdType of %s is unknown", m->eim_id);
    m->id_type = c->eimIdType ? (int)*c->eimIdType : 0;
    if (c->counterValue && *c->counterValue < 0)
        return esim_fail(err, ESIM_EINVAL, "counterValue of %s is negative", m->eim_id);
    m->counter = c->counterValue ? (uint64_t)*c->counterValue : 0;
    if (c->eimSupportedProtocol) {
        m->has_protocols = true;
        m->protocols = (uint8_t)bits_get(c->eimSupportedProtocol);
    }
    if (c->eimPublicKeyData) {
        bool cert = c->eimPublicKeyData->present ==
                    EimConfigurationData__eimPublicKeyData_PR_eimCertificate;
        esim_err rc =
            cert ? sgp32_encode(&asn_DEF_Certificate, &c->eimPublicKeyData->choice.eimCertificate,
                                &m->key_der, err)
                 : sgp32_encode(&asn_DEF_SubjectPublicKeyInfo,
                                &c->eimPublicKeyData->choice.eimPublicKey, &m->key_der, err);
        if (rc != ESIM_OK)
            return rc;
        m->key_is_cert = cert;
        /* A key the eUICC cannot use would make every package fail later. */
        const unsigned char *p = m->key_der.data;
        X509 *x = cert ? sim_euicc_parse_cert_der(e, p, m->key_der.len) : NULL;
        EVP_PKEY *pk =
            cert ? (x ? X509_get_pubkey(x) : NULL) : d2i_PUBKEY(NULL, &p, (long)m->key_der.len);
        bool ok = pk && EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC;
        EVP_PKEY_free(pk);
        X509_free(x);
        if (!ok) {
            esim_buf_free(&m->key_der);
            return esim_fail(err, ESIM_EINVAL, "eimPublicKeyData of %s is not an EC key",
                             m->eim_id);
        }
    }
    return ESIM_OK;
}

/* Whether the eUICC can trust the eIM key of |c| by its CI (SGP.32: the
 * eIM's certificate is verified with the CI public key euiccCiPKId names;
 * ciPKUnknown otherwise): a euiccCiPKId must name the eUICC's CI, and an
 * eimCertificate must chain to it. A bare eimPublicKey has nothing to
 * verify: it is taken as given (AddInitialEim comes from the device's own
 * IPA, an eCO is signed by an eIM already trusted). */
static bool eim_ci_ok(const sim_euicc *e, const EimConfigurationData_t *c)
{
    X509 *ci = sim_euicc_trusted_ci(e);
    if (c->euiccCiPKId) {
        const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(ci);
        if (!ski || ASN1_STRING_length(ski) != (int)c->euiccCiPKId->size ||
            memcmp(ASN1_STRING_get0_data(ski), c->euiccCiPKId->buf, c->euiccCiPKId->size) != 0)
            return false;
    }
    if (!c->eimPublicKeyData ||
        c->eimPublicKeyData->present != EimConfigurationData__eimPublicKeyData_PR_eimCertificate)
        return true;
    esim_buf der = {0};
    bool ok = false;
    if (sgp32_encode(&asn_DEF_Certificate, &c->eimPublicKeyData->choice.eimCertificate, &der,
                     NULL) == ESIM_OK) {
        X509 *x = sim_euicc_verify_ci_cert_der(e, der.data, der.len);
        ok = x != NULL;
        X509_free(x);
    }
    esim_buf_free(&der);
    return ok;
}

/* The EimConfigurationData the eUICC gives back for |m| (no key: the eIM
 * knows its own). */
static EimConfigurationData_t *eim_to_config(const sim_eim_info *m)
{
    EimConfigurationData_t *c = calloc(1, sizeof *c);
    if (!c || !str_set(&c->eimId, m->eim_id, strlen(m->eim_id)))
        goto fail;
    if (m->fqdn[0] && !(c->eimFqdn = str_new(m->fqdn, strlen(m->fqdn))))
        goto fail;
    if (m->id_type && !(c->eimIdType = long_new(m->id_type)))
        goto fail;
    if (!(c->counterValue = long_new((long)m->counter)) ||
        !(c->associationToken = long_new((long)m->association_token)))
        goto fail;
    if (m->has_protocols) {
        if (!(c->eimSupportedProtocol = calloc(1, sizeof *c->eimSupportedProtocol)) ||
            !bits_set(c->eimSupportedProtocol, m->protocols))
            goto fail;
    }
    return c;
fail:
    sgp32_free(&asn_DEF_EimConfigurationData, c);
    return NULL;
}

static esim_err get_eim_config(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                               esim_error *err)
{
    void *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_GetEimConfigurationDataRequest, req, len, &q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "GetEimConfigurationData");
    sgp32_free(&asn_DEF_GetEimConfigurationDataRequest, q);
    GetEimConfigurationDataResponse_t *a = calloc(1, sizeof *a);
    if (!a)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < sim_euicc_eim_count(e); i++) {
        EimConfigurationData_t *c = eim_to_config(sim_euicc_eim_at(e, i));
        if (!c || ASN_SEQUENCE_ADD(&a->eimConfigurationDataList.list, c) != 0) {
            sgp32_free(&asn_DEF_EimConfigurationData, c);
            sgp32_free(&asn_DEF_GetEimConfigurationDataResponse, a);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
    }
    return answer(&asn_DEF_GetEimConfigurationDataResponse, a, out, err);
}

static esim_err add_initial_error(long code, esim_buf *out, esim_error *err)
{
    AddInitialEimResponse_t *a = calloc(1, sizeof *a);
    if (!a)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    a->present = AddInitialEimResponse_PR_addInitialEimError;
    a->choice.addInitialEimError = code;
    return answer(&asn_DEF_AddInitialEimResponse, a, out, err);
}

/* ES10b AddInitialEim: the first eIM(s), unsigned, from the IPA. Only an
 * eUICC without an eIM takes it; later eIMs come as signed addEim eCOs. */
static esim_err add_initial_eim(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                                esim_error *err)
{
    AddInitialEimRequest_t *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_AddInitialEimRequest, req, len, (void **)&q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "AddInitialEim");
    size_t n = (size_t)q->eimConfigurationDataList.list.count;
    sim_eim_info *cfg = n ? calloc(n, sizeof *cfg) : NULL;
    long code = 0;
    if (n && !cfg)
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    else if (n == 0)
        rc = esim_fail(err, ESIM_EINVAL, "AddInitialEim: no eIM in the list");
    else if (sim_euicc_eim_count(e) > 0)
        code = AddInitialEimResponse__addInitialEimError_unsignedEimConfigDisallowed;
    else if (n > SIM_MAX_EIMS)
        code = AddInitialEimResponse__addInitialEimError_insufficientMemory;
    for (size_t i = 0; rc == ESIM_OK && !code && i < n; i++) {
        rc = eim_from_config(e, q->eimConfigurationDataList.list.array[i], &cfg[i], err);
        for (size_t k = 0; rc == ESIM_OK && k < i; k++)
            if (strcmp(cfg[k].eim_id, cfg[i].eim_id) == 0)
                rc = esim_fail(err, ESIM_EINVAL, "AddInitialEim: eIM %s twice", cfg[i].eim_id);
    }
    for (size_t i = 0; rc == ESIM_OK && !code && i < n; i++)
        if (!eim_ci_ok(e, q->eimConfigurationDataList.list.array[i]))
            code = AddInitialEimResponse__addInitialEimError_ciPKUnknown;
    if (rc == ESIM_OK && code)
        rc = add_initial_error(code, out, err);
    else if (rc == ESIM_OK) {
        AddInitialEimResponse_t *a = calloc(1, sizeof *a);
        rc = a ? ESIM_OK : ESIM_ENOMEM;
        if (a)
            a->present = AddInitialEimResponse_PR_addInitialEimOk;
        for (size_t i = 0; rc == ESIM_OK && i < n; i++) {
            struct AddInitialEimResponse__addInitialEimOk__Member *m = calloc(1, sizeof *m);
            int64_t token = 0;
            if (!m || ASN_SEQUENCE_ADD(&a->choice.addInitialEimOk.list, m) != 0) {
                free(m);
                rc = ESIM_ENOMEM;
            } else if ((rc = sim_euicc_eim_add(e, &cfg[i], &token)) == ESIM_OK) {
                m->present = AddInitialEimResponse__addInitialEimOk__Member_PR_associationToken;
                m->choice.associationToken = (long)token;
            }
        }
        if (rc == ESIM_OK)
            rc = answer(&asn_DEF_AddInitialEimResponse, a, out, err);
        else {
            sgp32_free(&asn_DEF_AddInitialEimResponse, a);
            rc = esim_fail(err, rc, "AddInitialEim: could not keep the eIMs");
        }
    }
    for (size_t i = 0; cfg && i < n; i++)
        esim_buf_free(&cfg[i].key_der);
    free(cfg);
    sgp32_free(&asn_DEF_AddInitialEimRequest, q);
    return rc;
}

/* ---- profiles ------------------------------------------------------------------- */

/* Adds to |list| (a SEQUENCE OF ProfileInfo) the profiles |q| asks for
 * (NULL: all). */
static esim_err profile_infos(const sim_euicc *e, const ProfileInfoListRequest_t *q, void *list)
{
    for (size_t i = 0; i < sim_euicc_profile_count(e); i++) {
        const sim_profile *p = sim_euicc_profile_at(e, i);
        if (q && q->searchCriteria) {
            const struct ProfileInfoListRequest__searchCriteria *s = q->searchCriteria;
            char iccid[21];
            if (s->present == ProfileInfoListRequest__searchCriteria_PR_iccid &&
                (sgp32_iccid_from_bytes(s->choice.iccid.buf, (size_t)s->choice.iccid.size, iccid,
                                        NULL) != ESIM_OK ||
                 strcmp(iccid, p->iccid) != 0))
                continue;
            if (s->present == ProfileInfoListRequest__searchCriteria_PR_profileClass &&
                s->choice.profileClass != (long)p->profile_class)
                continue;
            if (s->present == ProfileInfoListRequest__searchCriteria_PR_isdpAid)
                continue; /* the virtual eUICC names no ISD-P */
        }
        uint8_t iccid[10];
        ProfileInfo_t *pi = calloc(1, sizeof *pi);
        bool ok = pi && sgp32_iccid_to_bytes(p->iccid, iccid, NULL) == ESIM_OK &&
                  (pi->iccid = str_new(iccid, sizeof iccid)) &&
                  (pi->profileState = long_new(p->state == SIM_PROFILE_ENABLED)) &&
                  (pi->profileClass = long_new((long)p->profile_class));
        /* serviceProviderName is at most 32 bytes in SGP.22. */
        size_t spn = strlen(p->service_provider) > 32 ? 32 : strlen(p->service_provider);
        ok = ok &&
             (!p->nickname[0] || (pi->profileNickname = str_new(p->nickname, strlen(p->nickname))));
        ok = ok && (!spn || (pi->serviceProviderName = str_new(p->service_provider, spn)));
        ok = ok && (!p->profile_name[0] ||
                    (pi->profileName = str_new(p->profile_name, strlen(p->profile_name))));
        if (!ok || ASN_SEQUENCE_ADD(list, pi) != 0) {
            sgp32_free(&asn_DEF_ProfileInfo, pi);
            return ESIM_ENOMEM;
        }
    }
    return ESIM_OK;
}

static esim_err profile_info_list(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                                  esim_error *err)
{
    ProfileInfoListRequest_t *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_ProfileInfoListRequest, req, len, (void **)&q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "ProfileInfoList");
    ProfileInfoListResponse_t *a = calloc(1, sizeof *a);
    rc = a ? ESIM_OK : ESIM_ENOMEM;
    if (a) {
        a->present = ProfileInfoListResponse_PR_profileInfoListOk;
        rc = profile_infos(e, q, &a->choice.profileInfoListOk.list);
    }
    sgp32_free(&asn_DEF_ProfileInfoListRequest, q);
    if (rc != ESIM_OK) {
        sgp32_free(&asn_DEF_ProfileInfoListResponse, a);
        return esim_fail(err, rc, "out of memory");
    }
    return answer(&asn_DEF_ProfileInfoListResponse, a, out, err);
}

/* ---- notifications --------------------------------------------------------------- */

static unsigned notif_bit(sim_notif_event ev)
{
    switch (ev) {
    case SIM_NOTIF_INSTALL:
        return 1u << 0;
    case SIM_NOTIF_ENABLE:
        return 1u << 1;
    case SIM_NOTIF_DISABLE:
        return 1u << 2;
    case SIM_NOTIF_DELETE:
        return 1u << 3;
    }
    return 0;
}

/* An install's notification, as SGP.22 (5.7.3) and SGP.32 keep it: the
 * ProfileInstallationResult of the download, its data (the session's
 * transactionId, the notification's metadata, the SM-DP+'s OID, a success
 * with the ISD-P's AID) signed by the eUICC (euiccSignPIR). The virtual
 * eUICC keeps no SM-DP+ OID or ISD-P AID: both are the test values the
 * IPA's trigger result also uses. */
static esim_err install_result(sim_euicc *e, const sim_notification *n,
                               ProfileInstallationResult_t *pir, esim_error *err)
{
    ProfileInstallationResultData_t *d = &pir->profileInstallationResultData;
    NotificationMetadata_t *nm = &d->notificationMetadata;
    static const uint8_t aid[16] = {0xa0, 0x00, 0x00, 0x05, 0x59, 0x10, 0x10, 0x01,
                                    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01};
    static const uint8_t sima_ok[] = {0x30, 0x07, 0xa0, 0x05, 0x30, 0x03, 0x80, 0x01, 0x00};
    static const uint32_t oid[] = {2, 999, 10};
    uint8_t iccid[10];
    nm->seqNumber = (long)n->seq;
    bool ok = str_set(&d->transactionId, n->transaction_id, sizeof n->transaction_id) &&
              bits_set(&nm->profileManagementOperation, notif_bit(n->event)) &&
              str_set(&nm->notificationAddress, n->smdp_address, strlen(n->smdp_address)) &&
              OBJECT_IDENTIFIER_set_arcs(&d->smdpOid, oid, sizeof oid[0], 3) == 0;
    if (ok && sgp32_iccid_to_bytes(n->iccid, iccid, NULL) == ESIM_OK)
        ok = (nm->iccid = str_new(iccid, sizeof iccid)) != NULL;
    d->finalResult.present = ProfileInstallationResultData__finalResult_PR_successResult;
    ok = ok && str_set(&d->finalResult.choice.successResult.aid, aid, sizeof aid) &&
         str_set(&d->finalResult.choice.successResult.simaResponse, sima_ok, sizeof sima_ok);
    if (!ok)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_buf tbs = {0};
    uint8_t sig[64];
    esim_err rc = sgp32_encode(&asn_DEF_ProfileInstallationResultData, d, &tbs, err);
    if (rc == ESIM_OK)
        rc = sim_euicc_sign(e, tbs.data, tbs.len, sig, err);
    esim_buf_free(&tbs);
    if (rc == ESIM_OK && !str_set(&pir->euiccSignPIR, sig, sizeof sig))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    return rc;
}

/* One pending notification: an install as its ProfileInstallationResult
 * (install_result), any other event as an OtherSignedNotification, its
 * metadata signed by the eUICC, with the eUICC and EUM certificates. */
static esim_err pending_notification(sim_euicc *e, const sim_notification *n,
                                     PendingNotification_t **out, esim_error *err)
{
    PendingNotification_t *pn = calloc(1, sizeof *pn);
    if (!pn)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (n->event == SIM_NOTIF_INSTALL) {
        pn->present = PendingNotification_PR_profileInstallationResult;
        esim_err rc = install_result(e, n, &pn->choice.profileInstallationResult, err);
        if (rc != ESIM_OK) {
            sgp32_free(&asn_DEF_PendingNotification, pn);
            return rc;
        }
        *out = pn;
        return ESIM_OK;
    }
    pn->present = PendingNotification_PR_otherSignedNotification;
    OtherSignedNotification_t *o = &pn->choice.otherSignedNotification;
    NotificationMetadata_t *t = &o->tbsOtherNotification;
    t->seqNumber = (long)n->seq;
    uint8_t iccid[10];
    esim_err rc = ESIM_OK;
    if (!bits_set(&t->profileManagementOperation, notif_bit(n->event)) ||
        !str_set(&t->notificationAddress, n->smdp_address, strlen(n->smdp_address)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (rc == ESIM_OK && sgp32_iccid_to_bytes(n->iccid, iccid, NULL) == ESIM_OK &&
        !(t->iccid = str_new(iccid, sizeof iccid)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_buf tbs = {0};
    uint8_t sig[64];
    if (rc == ESIM_OK)
        rc = sgp32_encode(&asn_DEF_NotificationMetadata, t, &tbs, err);
    if (rc == ESIM_OK)
        rc = sim_euicc_sign(e, tbs.data, tbs.len, sig, err);
    esim_buf_free(&tbs);
    if (rc == ESIM_OK && !str_set(&o->euiccNotificationSignature, sig, sizeof sig))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    const esim_buf *euicc, *eum;
    if (rc == ESIM_OK)
        rc = sim_euicc_cert_der(e, &euicc, &eum, err);
    if (rc == ESIM_OK)
        rc = cert_set(&o->euiccCertificate, euicc, err);
    if (rc == ESIM_OK)
        rc = cert_set(&o->eumCertificate, eum, err);
    if (rc != ESIM_OK) {
        sgp32_free(&asn_DEF_PendingNotification, pn);
        return rc;
    }
    *out = pn;
    return ESIM_OK;
}

static esim_err retrieve_notifications(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                                       esim_error *err)
{
    RetrieveNotificationsListRequest_t *q = NULL;
    esim_err rc =
        sgp32_decode(&asn_DEF_RetrieveNotificationsListRequest, req, len, (void **)&q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "RetrieveNotificationsList");
    RetrieveNotificationsListResponse_t *a = calloc(1, sizeof *a);
    rc = a ? ESIM_OK : esim_fail(err, ESIM_ENOMEM, "out of memory");
    const struct RetrieveNotificationsListRequest__searchCriteria *s = q->searchCriteria;
    if (a && s &&
        s->present == RetrieveNotificationsListRequest__searchCriteria_PR_euiccPackageResults) {
        /* Results are handed back at once by LoadEuiccPackage; none wait. */
        a->present = RetrieveNotificationsListResponse_PR_euiccPackageResultList;
    } else if (a) {
        a->present = RetrieveNotificationsListResponse_PR_notificationList;
        for (size_t i = 0; rc == ESIM_OK && i < sim_euicc_notification_count(e); i++) {
            const sim_notification *n = sim_euicc_notification_at(e, i);
            if (s && s->present == RetrieveNotificationsListRequest__searchCriteria_PR_seqNumber &&
                s->choice.seqNumber != (long)n->seq)
                continue;
            if (s &&
                s->present ==
                    RetrieveNotificationsListRequest__searchCriteria_PR_profileManagementOperation &&
                !(bits_get(&s->choice.profileManagementOperation) & notif_bit(n->event)))
                continue;
            PendingNotification_t *pn = NULL;
            rc = pending_notification(e, n, &pn, err);
            if (rc == ESIM_OK && ASN_SEQUENCE_ADD(&a->choice.notificationList.list, pn) != 0) {
                sgp32_free(&asn_DEF_PendingNotification, pn);
                rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            }
        }
    }
    sgp32_free(&asn_DEF_RetrieveNotificationsListRequest, q);
    if (rc != ESIM_OK) {
        sgp32_free(&asn_DEF_RetrieveNotificationsListResponse, a);
        return rc;
    }
    /* ES10b answers BF2B around the CHOICE. */
    rc = sgp32_encode_explicit(SGP32_TAG_NOTIFICATIONS_LIST,
                               &asn_DEF_RetrieveNotificationsListResponse, a, out, err);
    sgp32_free(&asn_DEF_RetrieveNotificationsListResponse, a);
    return rc;
}

static esim_err remove_notification(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                                    esim_error *err)
{
    NotificationSentRequest_t *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_NotificationSentRequest, req, len, (void **)&q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "RemoveNotificationFromList");
    long seq = q->seqNumber;
    sgp32_free(&asn_DEF_NotificationSentRequest, q);
    NotificationSentResponse_t *a = calloc(1, sizeof *a);
    if (!a)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    bool removed = seq > 0 && seq <= (long)UINT32_MAX &&
                   sim_euicc_notification_remove(e, (uint32_t)seq) == ESIM_OK;
    a->deleteNotificationStatus =
        removed ? NotificationSentResponse__deleteNotificationStatus_ok
                : NotificationSentResponse__deleteNotificationStatus_nothingToDelete;
    return answer(&asn_DEF_NotificationSentResponse, a, out, err);
}

/* ---- LoadEuiccPackage -------------------------------------------------------------- */

/* The eIM's public key from its configuration; NULL when it has none. */
static EVP_PKEY *eim_public_key(const sim_euicc *e, const sim_eim_info *m)
{
    if (!m->key_der.len)
        return NULL;
    const unsigned char *p = m->key_der.data;
    if (!m->key_is_cert)
        return d2i_PUBKEY(NULL, &p, (long)m->key_der.len);
    X509 *x = sim_euicc_parse_cert_der(e, m->key_der.data, m->key_der.len);
    EVP_PKEY *k = x ? X509_get_pubkey(x) : NULL;
    X509_free(x);
    return k;
}

static long psmo_code(sim_result r)
{
    switch (r) {
    case SIM_RES_OK:
        return 0;
    case SIM_RES_ICCID_OR_AID_NOT_FOUND:
        return 1;
    case SIM_RES_PROFILE_NOT_IN_DISABLED_STATE:
    case SIM_RES_PROFILE_NOT_IN_ENABLED_STATE:
        return 2;
    default:
        return 127; /* v1.0 has no disallowedByPolicy: undefinedError */
    }
}

static sim_result on_iccid(sim_euicc *e, const Iccid_t *b,
                           sim_result (*op)(sim_euicc *, const char *))
{
    char iccid[21];
    if (sgp32_iccid_from_bytes(b->buf, (size_t)b->size, iccid, NULL) != ESIM_OK)
        return SIM_RES_ICCID_OR_AID_NOT_FOUND;
    return op(e, iccid);
}

static esim_err run_psmo(sim_euicc *e, const Psmo_t *p, EuiccResultData_t *r)
{
    switch (p->present) {
    case Psmo_PR_enable:
        r->present = EuiccResultData_PR_enableResult;
        r->choice.enableResult = psmo_code(on_iccid(e, &p->choice.enable.iccid, sim_euicc_enable));
        return ESIM_OK;
    case Psmo_PR_disable:
        r->present = EuiccResultData_PR_disableResult;
        r->choice.disableResult =
            psmo_code(on_iccid(e, &p->choice.disable.iccid, sim_euicc_disable));
        return ESIM_OK;
    case Psmo_PR_delete:
        r->present = EuiccResultData_PR_deleteResult;
        r->choice.deleteResult = psmo_code(on_iccid(e, &p->choice.delete.iccid, sim_euicc_delete));
        return ESIM_OK;
    case Psmo_PR_listProfileInfo:
        r->present = EuiccResultData_PR_listProfileInfoResult;
        r->choice.listProfileInfoResult.present = Sgp32ProfileInfoListResponse_PR_profileInfoListOk;
        return profile_infos(e, &p->choice.listProfileInfo,
                             &r->choice.listProfileInfoResult.choice.profileInfoListOk.list);
    case Psmo_PR_getRAT:
        /* No profile policy rule is authorised on this eUICC: an empty RAT. */
        r->present = EuiccResultData_PR_getRATResult;
        return ESIM_OK;
    case Psmo_PR_configureAutoEnable: {
        const struct Psmo__configureAutoEnable *c = &p->choice.configureAutoEnable;
        char addr[256] = "";
        r->present = EuiccResultData_PR_configureAutoEnableResult;
        if (c->smdpAddress && !str_copy(c->smdpAddress, addr, sizeof addr)) {
            r->choice.configureAutoEnableResult =
                EuiccResultData__configureAutoEnableResult_commandError;
            return ESIM_OK;
        }
        sim_euicc_set_auto_enable(e, c->autoEnableFlag != NULL, addr);
        r->choice.configureAutoEnableResult = EuiccResultData__configureAutoEnableResult_ok;
        return ESIM_OK;
    }
    default:
        r->present = EuiccResultData_PR_processingTerminated;
        r->choice.processingTerminated =
            EuiccResultData__processingTerminated_unknownOrDamagedCommand;
        return ESIM_OK;
    }
}

static esim_err run_eco(sim_euicc *e, const Eco_t *c, EuiccResultData_t *r)
{
    sim_eim_info m;
    switch (c->present) {
    case Eco_PR_addEim: {
        r->present = EuiccResultData_PR_addEimResult;
        AddEimResult_t *a = &r->choice.addEimResult;
        a->present = AddEimResult_PR_addEimResultCode;
        if (eim_from_config(e, &c->choice.addEim, &m, NULL) != ESIM_OK) {
            a->choice.addEimResultCode = AddEimResult__addEimResultCode_commandError;
            return ESIM_OK;
        }
        if (!eim_ci_ok(e, &c->choice.addEim)) {
            esim_buf_free(&m.key_der);
            a->choice.addEimResultCode = AddEimResult__addEimResultCode_ciPKUnknown;
            return ESIM_OK;
        }
        int64_t token = 0;
        esim_err rc = sim_euicc_eim_add(e, &m, &token);
        esim_buf_free(&m.key_der);
        if (rc == ESIM_ENOMEM)
            return rc;
        if (rc == ESIM_OK) {
            a->present = AddEimResult_PR_associationToken;
            a->choice.associationToken = (long)token;
        } else {
            a->choice.addEimResultCode = rc == ESIM_ETOOBIG
                                             ? AddEimResult__addEimResultCode_insufficientMemory
                                             : AddEimResult__addEimResultCode_commandError;
        }
        return ESIM_OK;
    }
    case Eco_PR_deleteEim: {
        r->present = EuiccResultData_PR_deleteEimResult;
        char id[SIM_EIM_ID_MAX + 1];
        if (!str_copy(&c->choice.deleteEim.eimId, id, sizeof id) ||
            sim_euicc_eim_delete(e, id) != ESIM_OK)
            r->choice.deleteEimResult = EuiccResultData__deleteEimResult_eimNotFound;
        else
            r->choice.deleteEimResult = sim_euicc_eim_count(e) == 0
                                            ? EuiccResultData__deleteEimResult_lastEimDeleted
                                            : EuiccResultData__deleteEimResult_ok;
        return ESIM_OK;
    }
    case Eco_PR_updateEim: {
        r->present = EuiccResultData_PR_updateEimResult;
        if (eim_from_config(e, &c->choice.updateEim, &m, NULL) != ESIM_OK) {
            r->choice.updateEimResult = EuiccResultData__updateEimResult_commandError;
            return ESIM_OK;
        }
        if (!eim_ci_ok(e, &c->choice.updateEim)) {
            esim_buf_free(&m.key_der);
            r->choice.updateEimResult = EuiccResultData__updateEimResult_ciPKUnknown;
            return ESIM_OK;
        }
        const sim_eim_info *cur = sim_euicc_eim_find(e, m.eim_id);
        long code = EuiccResultData__updateEimResult_ok;
        if (!cur)
            code = EuiccResultData__updateEimResult_eimNotFound;
        /* A counter may only move up: lowering it would let old packages in. */
        else if (c->choice.updateEim.counterValue && m.counter < cur->counter)
            code = EuiccResultData__updateEimResult_counterValueOutOfRange;
        else {
            if (!c->choice.updateEim.counterValue)
                m.counter = cur->counter;
            if (!c->choice.updateEim.eimPublicKeyData) { /* keep the key it had */
                if (cur->key_der.len &&
                    esim_buf_append(&m.key_der, cur->key_der.data, cur->key_der.len) != ESIM_OK) {
                    esim_buf_free(&m.key_der);
                    return ESIM_ENOMEM;
                }
                m.key_is_cert = cur->key_is_cert;
            }
            if (sim_euicc_eim_update(e, &m) != ESIM_OK) {
                esim_buf_free(&m.key_der);
                return ESIM_ENOMEM;
            }
        }
        esim_buf_free(&m.key_der);
        r->choice.updateEimResult = code;
        return ESIM_OK;
    }
    case Eco_PR_listEim: {
        r->present = EuiccResultData_PR_listEimResult;
        ListEimResult_t *l = &r->choice.listEimResult;
        l->present = ListEimResult_PR_eimIdList;
        for (size_t i = 0; i < sim_euicc_eim_count(e); i++) {
            const sim_eim_info *x = sim_euicc_eim_at(e, i);
            EimIdInfo_t *info = calloc(1, sizeof *info);
            if (!info || !str_set(&info->eimId, x->eim_id, strlen(x->eim_id)) ||
                (x->id_type && !(info->eimIdType = long_new(x->id_type))) ||
                ASN_SEQUENCE_ADD(&l->choice.eimIdList.list, info) != 0) {
                sgp32_free(&asn_DEF_EimIdInfo, info);
                return ESIM_ENOMEM;
            }
        }
        return ESIM_OK;
    }
    default:
        r->present = EuiccResultData_PR_processingTerminated;
        r->choice.processingTerminated =
            EuiccResultData__processingTerminated_unknownOrDamagedCommand;
        return ESIM_OK;
    }
}

/* A copy of the request's transactionId (NULL when it had none). */
static esim_err copy_txid(const TransactionId_t *in, TransactionId_t **out)
{
    *out = NULL;
    if (in && !(*out = str_new(in->buf, (size_t)in->size)))
        return ESIM_ENOMEM;
    return ESIM_OK;
}

/* A signed package error (EuiccPackageErrorSigned): the package's signature
 * held, but it is not for this eUICC or its counter is not acceptable. */
static esim_err package_error_signed(sim_euicc *e, const EuiccPackageRequest_t *q, long code,
                                     EuiccPackageResult_t *res, esim_error *err)
{
    res->present = EuiccPackageResult_PR_euiccPackageErrorSigned;
    EuiccPackageErrorSigned_t *s = &res->choice.euiccPackageErrorSigned;
    EuiccPackageErrorDataSigned_t *d = &s->euiccPackageErrorDataSigned;
    const EuiccPackageSigned_t *p = &q->euiccPackageSigned;
    d->counterValue = p->counterValue;
    d->euiccPackageErrorCode = code;
    if (!str_set(&d->eimId, p->eimId.buf, (size_t)p->eimId.size) ||
        copy_txid(p->transactionId, &d->transactionId) != ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_buf in = {0};
    uint8_t sig[64];
    esim_err rc =
        sgp32_euicc_sign_epe_input(d, q->eimSignature.buf, (size_t)q->eimSignature.size, &in, err);
    if (rc == ESIM_OK)
        rc = sim_euicc_sign(e, in.data, in.len, sig, err);
    esim_buf_free(&in);
    if (rc == ESIM_OK && !str_set(&s->euiccSignEPE, sig, sizeof sig))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    return rc;
}

/* The package is accepted: its operations run in order and the result is
 * signed (euiccSignEPR over the result data and the eIM's signature). */
static esim_err package_run(sim_euicc *e, const EuiccPackageRequest_t *q, const char *eim_id,
                            EuiccPackageResult_t *res, esim_error *err)
{
    const EuiccPackageSigned_t *p = &q->euiccPackageSigned;
    /* The counter is used up before anything runs: an eCO may delete this
     * very eIM, and a package is never run twice whatever it did. */
    sim_euicc_eim_accept_counter(e, eim_id, (uint64_t)p->counterValue);
    res->present = EuiccPackageResult_PR_euiccPackageResultSigned;
    EuiccPackageResultSigned_t *s = &res->choice.euiccPackageResultSigned;
    EuiccPackageResultDataSigned_t *d = &s->euiccPackageResultDataSigned;
    d->counterValue = p->counterValue;
    d->seqNumber = (long)sim_euicc_take_seq(e);
    if (!str_set(&d->eimId, p->eimId.buf, (size_t)p->eimId.size) ||
        copy_txid(p->transactionId, &d->transactionId) != ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    bool psmo = p->euiccPackage.present == EuiccPackage_PR_psmoList;
    int n = psmo ? p->euiccPackage.choice.psmoList.list.count
                 : p->euiccPackage.choice.ecoList.list.count;
    for (int i = 0; i < n; i++) {
        EuiccResultData_t *r = calloc(1, sizeof *r);
        if (!r || ASN_SEQUENCE_ADD(&d->euiccResult.list, r) != 0) {
            free(r);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        esim_err rc = psmo ? run_psmo(e, p->euiccPackage.choice.psmoList.list.array[i], r)
                           : run_eco(e, p->euiccPackage.choice.ecoList.list.array[i], r);
        if (rc != ESIM_OK)
            return esim_fail(err, rc, "out of memory");
    }
    esim_buf in = {0};
    uint8_t sig[64];
    esim_err rc =
        sgp32_euicc_sign_epr_input(d, q->eimSignature.buf, (size_t)q->eimSignature.size, &in, err);
    if (rc == ESIM_OK)
        rc = sim_euicc_sign(e, in.data, in.len, sig, err);
    esim_buf_free(&in);
    if (rc == ESIM_OK && !str_set(&s->euiccSignEPR, sig, sizeof sig))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    return rc;
}

/* ES10b LoadEuiccPackage (SGP.32 §5.9.1, contract §2): the eimId must be
 * associated and the eimSignature verify with that eIM's key (else the
 * unsigned error, nothing else said); then the EID must be this eUICC's
 * (invalidEid) and the counter above the last accepted one (replayError)
 * but not by more than SIM_COUNTER_WINDOW (counterValueOutOfRange), both
 * answered signed. Only an accepted package changes the eUICC. */
static esim_err load_package(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                             esim_error *err)
{
    EuiccPackageRequest_t *q = NULL;
    esim_err rc = sgp32_decode(&asn_DEF_EuiccPackageRequest, req, len, (void **)&q, err);
    if (rc != ESIM_OK)
        return bad(rc, err, "LoadEuiccPackage");
    const EuiccPackageSigned_t *p = &q->euiccPackageSigned;
    EuiccPackageResult_t *res = calloc(1, sizeof *res);
    char eim_id[SIM_EIM_ID_MAX + 1] = "";
    const sim_eim_info *eim = NULL;
    if (!res)
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    else if (str_copy(&p->eimId, eim_id, sizeof eim_id))
        eim = sim_euicc_eim_find(e, eim_id);
    bool verified = false;
    if (rc == ESIM_OK && eim) {
        EVP_PKEY *pub = eim_public_key(e, eim);
        long token = (long)eim->association_token;
        verified = pub && sgp32_package_verify(q, pub, &token, NULL) == ESIM_OK;
        EVP_PKEY_free(pub);
    }
    uint8_t eid[16];
    if (rc == ESIM_OK && !verified) {
        res->present = EuiccPackageResult_PR_euiccPackageErrorUnsigned;
        EuiccPackageErrorUnsigned_t *u = &res->choice.euiccPackageErrorUnsigned;
        if (!str_set(&u->eimId, p->eimId.buf, (size_t)p->eimId.size) ||
            (eim && !(u->associationToken = long_new((long)eim->association_token))))
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    } else if (rc == ESIM_OK) {
        rc = sgp32_eid_to_bytes(sim_euicc_eid(e), eid, err);
        uint64_t last = eim->counter;
        long code = 0;
        if (rc != ESIM_OK)
            ;
        else if (p->eidValue.size != 16 || memcmp(p->eidValue.buf, eid, 16) != 0)
            code = EuiccPackageErrorDataSigned__euiccPackageErrorCode_invalidEid;
        else if (p->counterValue <= 0 || (uint64_t)p->counterValue <= last)
            code = EuiccPackageErrorDataSigned__euiccPackageErrorCode_replayError;
        else if ((uint64_t)p->counterValue - last > SIM_COUNTER_WINDOW)
            code = EuiccPackageErrorDataSigned__euiccPackageErrorCode_counterValueOutOfRange;
        if (rc == ESIM_OK)
            rc = code ? package_error_signed(e, q, code, res, err)
                      : package_run(e, q, eim_id, res, err);
    }
    if (rc == ESIM_OK)
        rc = sgp32_encode_explicit(SGP32_TAG_EUICC_PACKAGE, &asn_DEF_EuiccPackageResult, res, out,
                                   err);
    sgp32_free(&asn_DEF_EuiccPackageResult, res);
    sgp32_free(&asn_DEF_EuiccPackageRequest, q);
    return rc;
}

/* ---- the entry point ----------------------------------------------------------------- */

esim_err sim_euicc_es10(sim_euicc *e, const uint8_t *req, size_t len, esim_buf *out,
                        esim_error *err)
{
    if (!e || !req || !out)
        return esim_fail(err, ESIM_EINVAL, "sim_euicc_es10 needs an eUICC, a request and a buffer");
    if (len < 2 || req[0] != 0xBF)
        return esim_fail(err, ESIM_EINVAL, "not an ES10 request (they start with BF)");
    switch (req[1]) {
    case 0x3E: /* GetEuiccData (GetEID) */
        return get_eid(e, req, len, out, err);
    case 0x55: /* GetEimConfigurationData */
        return get_eim_config(e, req, len, out, err);
    case 0x57: /* AddInitialEim */
        return add_initial_eim(e, req, len, out, err);
    case 0x51: /* LoadEuiccPackage */
        return load_package(e, req, len, out, err);
    case 0x2D: /* GetProfilesInfo */
        return profile_info_list(e, req, len, out, err);
    case 0x2B: /* RetrieveNotificationsList */
        return retrieve_notifications(e, req, len, out, err);
    case 0x30: /* RemoveNotificationFromList */
        return remove_notification(e, req, len, out, err);
    case 0x56: /* GetCerts: the eUICC and EUM certificates for the IPA */
        return get_certs(e, req, len, out, err);
    case 0x22: /* GetEUICCInfo2 */
        return euicc_info2(e, req, len, out, err);
    case 0x3C: /* EuiccConfiguredAddresses */
        return configured_addresses(e, req, len, out, err);
    case 0x43: /* GetRAT */
        return get_rat(req, len, out, err);
    default:
        return esim_fail(err, ESIM_EINVAL, "ES10 request BF%02X is not one this eUICC knows",
                         req[1]);
    }
}
