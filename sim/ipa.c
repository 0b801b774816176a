/*
 * ipa.c — the IoT Profile Assistant of a simulated IoT device (SGP.32 IPAd):
 * AddInitialEim on its eUICC, then poll cycles over ESipa (DER over HTTP):
 * GetEimPackageRequest, the package handed on (a BF51 to the eUICC
 * unchanged, a BF52 answered from ES10 data, a BF54 download run against
 * the SM-DP+), ProvideEimPackageResult, acknowledged notifications removed
 * from the eUICC; again until the eIM has nothing more. The eUICC is only
 * ever spoken to through sim_euicc_es10().
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sgp32/sgp32.h"
#include "sim/sim_internal.h"

/* A poll cycle handles at most this many packages before it sleeps again. */
#define MAX_PACKAGES_PER_CYCLE 16

struct sim_ipa {
    sim_euicc *e;
    sim_http *http;
    char eim_url[600];
    char ca_file[SIM_PATH_MAX];
    const char *const *resolve;
    size_t n_resolve;
    bool fail_downloads;
    bool indirect_downloads;
    bool busy;
    bool keep_connection;
    sim_http_conn *conn;  /* one device, one connection, for a poll cycle (or all of them) */
    sim_tls_session *tls; /* its TLS session with the eIM, resumed by its next connection */
    sim_lpa_link *es9;    /* its LPA's connection and TLS session with the SM-DP+ */
    sim_ipa_cb cb;
    void *cb_arg;
    sim_ipa_poll_result res;
    unsigned packages;
    char eim_txid[40];            /* the trigger's eimTransactionId, hex */
    struct download_op *indirect; /* the indirect download running (on_indirect) */
};

esim_err sim_ipa_new(sim_euicc *e, const sim_ipa_config *cfg, sim_ipa **out, esim_error *err)
{
    if (!e || !cfg || !cfg->http || !cfg->eim_url ||
        (strncmp(cfg->eim_url, "http://", 7) != 0 && strncmp(cfg->eim_url, "https://", 8) != 0))
        return esim_fail(err, ESIM_EINVAL, "the IPA needs an http(s):// eIM URL");
    sim_ipa *ipa = calloc(1, sizeof *ipa);
    if (!ipa)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    ipa->e = e;
    ipa->http = cfg->http;
    snprintf(ipa->eim_url, sizeof ipa->eim_url, "%s", cfg->eim_url);
    snprintf(ipa->ca_file, sizeof ipa->ca_file, "%s", cfg->ca_file ? cfg->ca_file : "");
    ipa->resolve = cfg->smdp_resolve;
    ipa->n_resolve = cfg->n_smdp_resolve;
    ipa->fail_downloads = cfg->fail_downloads;
    ipa->indirect_downloads = cfg->indirect_downloads;
    ipa->keep_connection = cfg->keep_connection;
    *out = ipa;
    return ESIM_OK;
}

void sim_ipa_free(sim_ipa *ipa)
{
    if (ipa) {
        sim_http_conn_free(ipa->conn);
        sim_tls_session_free(ipa->tls);
        sim_lpa_link_free(ipa->es9);
    }
    free(ipa);
}

bool sim_ipa_busy(const sim_ipa *ipa)
{
    return ipa->busy;
}

/* ---- ES10 through the eUICC's one DER entry point -------------------------------------- */

static esim_err es10(sim_ipa *ipa, const uint8_t *req, size_t len, esim_buf *out, esim_error *err)
{
    esim_buf_reset(out);
    return sim_euicc_es10(ipa->e, req, len, out, err);
}

esim_err sim_ipa_add_initial_eim(sim_euicc *e, const char *eim_id, const char *eim_fqdn,
                                 const esim_buf *eim_cert_der, long *token, esim_error *err)
{
    AddInitialEimRequest_t req = {0};
    EimConfigurationData_t *c = calloc(1, sizeof *c);
    esim_err rc = c ? ESIM_OK : ESIM_ENOMEM;
    if (rc == ESIM_OK && ASN_SEQUENCE_ADD(&req.eimConfigurationDataList.list, c) != 0) {
        free(c);
        rc = ESIM_ENOMEM;
    }
    if (rc != ESIM_OK) {
        ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_AddInitialEimRequest, &req);
        return esim_fail(err, rc, "out of memory");
    }
    c->eimFqdn = OCTET_STRING_new_fromBuf(&asn_DEF_UTF8String, eim_fqdn, -1);
    c->eimIdType = calloc(1, sizeof *c->eimIdType);
    c->counterValue = calloc(1, sizeof *c->counterValue);
    c->eimSupportedProtocol = calloc(1, sizeof *c->eimSupportedProtocol);
    c->eimPublicKeyData = calloc(1, sizeof *c->eimPublicKeyData);
    static const uint8_t retrieve_https = 0x80; /* bit 0: eimRetrieveHttps */
    if (OCTET_STRING_fromString(&c->eimId, eim_id) != 0 || !c->eimFqdn || !c->eimIdType ||
        !c->counterValue || !c->eimSupportedProtocol || !c->eimPublicKeyData ||
        OCTET_STRING_fromBuf((OCTET_STRING_t *)c->eimSupportedProtocol,
                             (const char *)&retrieve_https, 1) != 0)
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (rc == ESIM_OK) {
        *c->eimIdType = EimIdType_eimIdTypeFqdn;
        c->eimSupportedProtocol->bits_unused = 7;
        c->eimPublicKeyData->present = EimConfigurationData__eimPublicKeyData_PR_eimCertificate;
        Certificate_t *cert = NULL;
        rc = sgp32_decode(&asn_DEF_Certificate, eim_cert_der->data, eim_cert_der->len,
                          (void **)&cert, err);
        if (rc == ESIM_OK) {
            c->eimPublicKeyData->choice.eimCertificate = *cert;
            free(cert);
        }
    }
    esim_buf der = {0}, ans = {0};
    if (rc == ESIM_OK)
        rc = sgp32_encode(&asn_DEF_AddInitialEimRequest, &req, &der, err);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_AddInitialEimRequest, &req);
    if (rc == ESIM_OK)
        rc = sim_euicc_es10(e, der.data, der.len, &ans, err);
    AddInitialEimResponse_t *r = NULL;
    if (rc == ESIM_OK)
        rc = sgp32_decode(&asn_DEF_AddInitialEimResponse, ans.data, ans.len, (void **)&r, err);
    if (rc == ESIM_OK) {
        if (r->present != AddInitialEimResponse_PR_addInitialEimOk)
            rc = esim_fail(err, ESIM_ESTATE, "the eUICC refused AddInitialEim (error %ld)",
                           r->choice.addInitialEimError);
        else if (r->choice.addInitialEimOk.list.count != 1 ||
                 r->choice.addInitialEimOk.list.array[0]->present !=
                     AddInitialEimResponse__addInitialEimOk__Member_PR_associationToken)
            rc = esim_fail(err, ESIM_EPROTO, "AddInitialEim gave no association token");
        else
            *token = r->choice.addInitialEimOk.list.array[0]->choice.associationToken;
    }
    sgp32_free(&asn_DEF_AddInitialEimResponse, r);
    esim_buf_free(&der);
    esim_buf_free(&ans);
    return rc;
}

/* ---- the poll cycle ---------------------------------------------------------------------- */

static void finish(sim_ipa *ipa, esim_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void finish(sim_ipa *ipa, esim_err code, const char *fmt, ...)
{
    ipa->res.err = code;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ipa->res.message, sizeof ipa->res.message, fmt, ap);
        va_end(ap);
    }
    ipa->busy = false;
    /* A cycle that failed starts the next one on a new connection. */
    if (!ipa->keep_connection || code != ESIM_OK) {
        sim_http_conn_free(ipa->conn);
        ipa->conn = NULL;
    }
    sim_ipa_poll_result r = ipa->res;
    ipa->cb(ipa->cb_arg, &r);
}

static esim_err post(sim_ipa *ipa, const esim_buf *body, sim_http_cb cb)
{
    static const char *const headers[] = {"Content-Type: " SGP32_ESIPA_CONTENT_TYPE,
                                          "X-Admin-Protocol: " SGP32_ADMIN_PROTOCOL,
                                          "Accept: " SGP32_ESIPA_CONTENT_TYPE};
    sim_http_request req = {.method = "POST",
                            .url = ipa->eim_url,
                            .headers = headers,
                            .n_headers = 3,
                            .body = body->data,
                            .body_len = body->len,
                            .ca_file = ipa->ca_file[0] ? ipa->ca_file : NULL,
                            .conn = ipa->conn,
                            .tls = strncmp(ipa->eim_url, "https://", 8) == 0 ? &ipa->tls : NULL};
    return sim_http_send(ipa->http, &req, cb, ipa, NULL);
}

static void on_package(void *arg, sim_http_response *r);

static void poll_next(sim_ipa *ipa)
{
    esim_buf body = {0};
    esim_error e;
    if (sgp32_get_package_request(sim_euicc_eid(ipa->e), &body, &e) != ESIM_OK) {
        esim_buf_free(&body);
        finish(ipa, ESIM_EINVAL, "%s", e.msg);
        return;
    }
    if (post(ipa, &body, on_package) != ESIM_OK)
        finish(ipa, ESIM_EUNAVAIL, "cannot reach the eIM at %s", ipa->eim_url);
    esim_buf_free(&body);
}

esim_err sim_ipa_poll(sim_ipa *ipa, sim_ipa_cb cb, void *arg, esim_error *err)
{
    if (ipa->busy)
        return esim_fail(err, ESIM_ESTATE, "a poll is already running");
    if (!ipa->conn && sim_http_conn_new(&ipa->conn, err) != ESIM_OK)
        return ESIM_ENOMEM;
    ipa->busy = true;
    ipa->cb = cb;
    ipa->cb_arg = arg;
    memset(&ipa->res, 0, sizeof ipa->res);
    ipa->packages = 0;
    poll_next(ipa);
    return ESIM_OK;
}

/* The eIM's answer as an EsipaMessageFromEimToIpa; NULL (cycle finished)
 * when the transport or the DER was wrong. */
static EsipaMessageFromEimToIpa_t *eim_answer(sim_ipa *ipa, sim_http_response *r)
{
    if (r->err != ESIM_OK) {
        finish(ipa, ESIM_EUNAVAIL, "eIM unreachable: %s", r->errmsg);
        return NULL;
    }
    if (r->status != 200) {
        finish(ipa, ESIM_EPROTO, "eIM answered HTTP %ld", r->status);
        return NULL;
    }
    EsipaMessageFromEimToIpa_t *m = NULL;
    esim_error e;
    if (sgp32_decode(&asn_DEF_EsipaMessageFromEimToIpa, r->body.data, r->body.len, (void **)&m,
                     &e) != ESIM_OK) {
        finish(ipa, ESIM_EPROTO, "eIM answer: %s", e.msg);
        return NULL;
    }
    return m;
}

static void on_ack(void *arg, sim_http_response *r);

/* Sends ProvideEimPackageResult (|result| is the CHOICE's DER, e.g. BF51..). */
static void send_result(sim_ipa *ipa, const esim_buf *result)
{
    esim_buf body = {0};
    static const uint8_t tag[2] = {0xbf, 0x50};
    uint8_t len[5];
    size_t n = 0;
    if (result->len < 0x80) {
        len[n++] = (uint8_t)result->len;
    } else {
        size_t bytes = result->len > 0xffff ? 3 : result->len > 0xff ? 2 : 1;
        len[n++] = (uint8_t)(0x80 | bytes);
        for (size_t i = bytes; i-- > 0;)
            len[n++] = (uint8_t)(result->len >> (8 * i));
    }
    bool ok = esim_buf_append(&body, tag, 2) == ESIM_OK &&
              esim_buf_append(&body, len, n) == ESIM_OK &&
              esim_buf_append(&body, result->data, result->len) == ESIM_OK;
    if (!ok || post(ipa, &body, on_ack) != ESIM_OK)
        finish(ipa, ESIM_EUNAVAIL, "cannot send the result to the eIM");
    esim_buf_free(&body);
}

/* BF51: the package goes to the eUICC byte for byte; its answer (BF51
 * around EuiccPackageResult) is the result's CHOICE as ESipa carries it. */
static void run_euicc_package(sim_ipa *ipa, const uint8_t *pkg, size_t len)
{
    esim_buf ans = {0};
    esim_error e;
    EuiccPackageResult_t *res = NULL;
    if (es10(ipa, pkg, len, &ans, &e) != ESIM_OK ||
        sgp32_decode_explicit(SGP32_TAG_EUICC_PACKAGE, &asn_DEF_EuiccPackageResult, ans.data,
                              ans.len, (void **)&res, &e) != ESIM_OK) {
        esim_buf_free(&ans);
        /* ProvideEimPackageResult eimPackageError invalidPackageFormat(1) */
        esim_buf err_body = {0};
        sgp32_append_int_tlv(0x02, 1, &err_body);
        ipa->res.package_errors++;
        send_result(ipa, &err_body);
        esim_buf_free(&err_body);
        return;
    }
    if (res->present == EuiccPackageResult_PR_euiccPackageResultSigned)
        ipa->res.packages_ok++;
    else
        ipa->res.packages_refused++;
    sgp32_free(&asn_DEF_EuiccPackageResult, res);
    send_result(ipa, &ans);
    esim_buf_free(&ans);
}

/* BF52: the eUICC's certificates (ES10 GetCerts) as IpaEuiccData. */
static void run_data_request(sim_ipa *ipa)
{
    static const uint8_t get_certs[] = {0xbf, 0x56, 0x00};
    esim_buf ans = {0}, out = {0};
    esim_error e;
    GetCertsResponse_t *certs = NULL;
    IpaEuiccDataResponse_t resp = {.present = IpaEuiccDataResponse_PR_ipaEuiccDataError};
    resp.choice.ipaEuiccDataError = IpaEuiccDataResponse__ipaEuiccDataError_undefinedError;
    if (es10(ipa, get_certs, sizeof get_certs, &ans, &e) == ESIM_OK &&
        sgp32_decode(&asn_DEF_GetCertsResponse, ans.data, ans.len, (void **)&certs, &e) ==
            ESIM_OK &&
        certs->present == GetCertsResponse_PR_certs) {
        IpaEuiccData_t *d = &resp.choice.ipaEuiccData;
        memset(d, 0, sizeof *d);
        d->eumCertificate = calloc(1, sizeof *d->eumCertificate);
        d->euiccCertificate = calloc(1, sizeof *d->euiccCertificate);
        if (d->eumCertificate && d->euiccCertificate) {
            resp.present = IpaEuiccDataResponse_PR_ipaEuiccData;
            *d->eumCertificate = certs->choice.certs.eumCertificate;
            *d->euiccCertificate = certs->choice.certs.euiccCertificate;
            memset(&certs->choice.certs, 0, sizeof certs->choice.certs); /* moved */
        } else {
            free(d->eumCertificate);
            free(d->euiccCertificate);
            resp.choice.ipaEuiccDataError = IpaEuiccDataResponse__ipaEuiccDataError_undefinedError;
        }
    }
    sgp32_free(&asn_DEF_GetCertsResponse, certs);
    /* [82] around the CHOICE: explicit, BF52 */
    if (sgp32_encode_explicit(0xBF52, &asn_DEF_IpaEuiccDataResponse, &resp, &out, &e) != ESIM_OK)
        finish(ipa, ESIM_EINVAL, "IpaEuiccData: %s", e.msg);
    else {
        ipa->res.data_requests++;
        send_result(ipa, &out);
    }
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_IpaEuiccDataResponse, &resp);
    esim_buf_free(&ans);
    esim_buf_free(&out);
}

/* ---- BF54: a profile download ----------------------------------------------------------- */

typedef struct download_op {
    sim_ipa *ipa;
    TransactionId_t *eim_txid;
    char smdp[256];
    sim_download_result dl;
    /* the indirect download (below) */
    int step;
    char mid[256];
    uint8_t challenge[16], txid[16];
    size_t txid_len;
    X509 *server_cert;      /* verified against the eUICC's CI */
    unsigned char sig2[64]; /* euiccSignature2: what the package must be bound to */
    size_t notified;        /* notifications of the list already tried */
    long notify_seq;
} download_op;

/* ProfileDownloadTriggerResult [84]: the installation result or an error. */
static void send_download_result(download_op *op)
{
    sim_ipa *ipa = op->ipa;
    ProfileDownloadTriggerResult_t t = {0};
    t.eimTransactionId = op->eim_txid;
    op->eim_txid = NULL;
    esim_buf out = {0};
    esim_error e;
    esim_err rc = ESIM_OK;
    if (op->dl.err == ESIM_OK) {
        t.profileDownloadTriggerResultData.present =
            ProfileDownloadTriggerResult__profileDownloadTriggerResultData_PR_profileInstallationResult;
        ProfileInstallationResult_t *pir =
            &t.profileDownloadTriggerResultData.choice.profileInstallationResult;
        ProfileInstallationResultData_t *d = &pir->profileInstallationResultData;
        NotificationMetadata_t *nm = &d->notificationMetadata;
        uint8_t txid[16], iccid[10], install = 0x80, aid[16];
        static const uint8_t sima_ok[] = {0x30, 0x07, 0xa0, 0x05, 0x30, 0x03, 0x80, 0x01, 0x00};
        static const uint32_t oid[] = {2, 999, 10};
        esim_random_bytes(txid, sizeof txid);
        memcpy(aid, "\xa0\x00\x00\x05\x59\x10\x10\x01\x00\x00\x00\x00\x00\x00\x00\x01", 16);
        nm->iccid = calloc(1, sizeof *nm->iccid);
        bool ok = nm->iccid && sgp32_iccid_to_bytes(op->dl.iccid, iccid, &e) == ESIM_OK &&
                  OCTET_STRING_fromBuf(nm->iccid, (const char *)iccid, 10) == 0 &&
                  OCTET_STRING_fromBuf(&d->transactionId, (const char *)txid, 16) == 0 &&
                  OCTET_STRING_fromBuf((OCTET_STRING_t *)&nm->profileManagementOperation,
                                       (const char *)&install, 1) == 0 &&
                  OCTET_STRING_fromString(&nm->notificationAddress, op->smdp) == 0 &&
                  OBJECT_IDENTIFIER_set_arcs(&d->smdpOid, oid, sizeof oid[0], 3) == 0;
        if (ok) {
            nm->profileManagementOperation.bits_unused = 7;
            d->finalResult.present = ProfileInstallationResultData__finalResult_PR_successResult;
            ok = OCTET_STRING_fromBuf(&d->finalResult.choice.successResult.aid, (const char *)aid,
                                      16) == 0 &&
                 OCTET_STRING_fromBuf(&d->finalResult.choice.successResult.simaResponse,
                                      (const char *)sima_ok, sizeof sima_ok) == 0;
        }
        /* euiccSignPIR: the eUICC signs profileInstallationResultData */
        esim_buf signed_part = {0};
        unsigned char sig[64];
        ok = ok &&
             sgp32_encode(&asn_DEF_ProfileInstallationResultData, d, &signed_part, &e) == ESIM_OK &&
             sim_euicc_sign(ipa->e, signed_part.data, signed_part.len, sig, &e) == ESIM_OK &&
             OCTET_STRING_fromBuf(&pir->euiccSignPIR, (const char *)sig, sizeof sig) == 0;
        esim_buf_free(&signed_part);
        if (!ok)
            rc = ESIM_EINVAL;
        ipa->res.downloads_ok++;
    } else {
        t.profileDownloadTriggerResultData.present =
            ProfileDownloadTriggerResult__profileDownloadTriggerResultData_PR_profileDownloadError;
        OCTET_STRING_t *why = OCTET_STRING_new_fromBuf(&asn_DEF_OCTET_STRING, op->dl.message, -1);
        t.profileDownloadTriggerResultData.choice.profileDownloadError.errorResponse = why;
        ipa->res.downloads_failed++;
    }
    if (rc == ESIM_OK)
        rc = sgp32_encode(&asn_DEF_ProfileDownloadTriggerResult, &t, &out, &e);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_ProfileDownloadTriggerResult, &t);
    free(op);
    if (rc != ESIM_OK)
        finish(ipa, rc, "ProfileDownloadTriggerResult: %s", e.msg);
    else
        send_result(ipa, &out);
    esim_buf_free(&out);
}

static void after_notifications(void *arg, size_t still_pending)
{
    send_download_result(arg);
}

static void after_download(void *arg, const sim_download_result *r)
{
    download_op *op = arg;
    op->dl = *r;
    esim_error e;
    /* SGP.22: the install notification goes to the SM-DP+ (direct path). */
    if (r->err != ESIM_OK ||
        sim_lpa_send_notifications(op->ipa->http, op->ipa->e, &op->ipa->es9,
                                   op->ipa->ca_file[0] ? op->ipa->ca_file : NULL,
                                   after_notifications, op, &e) != ESIM_OK)
        send_download_result(op);
}

/* ---- BF54 through the eIM: the indirect download -------------------------------------
 *
 * SGP.32 3.2.3: an IPA that cannot reach the SM-DP+ runs SGP.22's mutual
 * authentication and download through the eIM, in ESipa DER: BF39
 * InitiateAuthentication, BF3B AuthenticateClient, BF3A
 * GetBoundProfilePackage (BF41 CancelSession when the eUICC refuses), then
 * the install notification as BF3D. The eUICC's side is the direct path's:
 * it verifies the SM-DP+ certificate against its CI and each signature,
 * signs euiccSigned1/euiccSigned2, and installs the package. */

enum { IND_INITIATE = 1, IND_AUTHENTICATE, IND_BPP, IND_CANCEL, IND_NOTIFY };

static void ind_fail(download_op *op, esim_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ind_fail(download_op *op, esim_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    op->dl.err = code;
    vsnprintf(op->dl.message, sizeof op->dl.message, fmt, ap);
    va_end(ap);
    X509_free(op->server_cert);
    op->server_cert = NULL;
    op->ipa->indirect = NULL;
    send_download_result(op);
}

static void on_indirect(void *arg, sim_http_response *r);

/* Posts one EsipaMessageFromIpaToEim of |op| (its step set); false: failed. */
static bool ind_post(download_op *op, const EsipaMessageFromIpaToEim_t *m)
{
    esim_buf body = {0};
    esim_error e;
    esim_err rc = sgp32_encode(&asn_DEF_EsipaMessageFromIpaToEim, m, &body, &e);
    if (rc == ESIM_OK && post(op->ipa, &body, on_indirect) != ESIM_OK)
        rc = esim_fail(&e, ESIM_EUNAVAIL, "cannot reach the eIM");
    esim_buf_free(&body);
    if (rc != ESIM_OK)
        ind_fail(op, rc, "indirect download: %s", e.msg);
    return rc == ESIM_OK;
}

/* Decodes the DER of an opaque SGP.22 structure (|td|, untagged SEQUENCE OF)
 * as the typed |as| after putting |tag| in place of its SEQUENCE tag. */
static void *retyped(const asn_TYPE_descriptor_t *td, const void *obj, uint16_t tag,
                     const asn_TYPE_descriptor_t *as)
{
    esim_buf der = {0}, tagged = {0};
    const uint8_t *v;
    size_t n;
    void *out = NULL;
    if (sgp32_encode(td, obj, &der, NULL) == ESIM_OK &&
        sgp32_tlv_unwrap(0x30, der.data, der.len, &v, &n, NULL) == ESIM_OK &&
        sgp32_tlv_wrap(tag, v, n, &tagged) == ESIM_OK)
        sgp32_decode(as, tagged.data, tagged.len, &out, NULL);
    esim_buf_free(&der);
    esim_buf_free(&tagged);
    return out;
}

/* |cert|'s public key verifies |sig| (64 bytes, r‖s) over |td|'s DER of |obj|. */
static bool ind_sig_ok(X509 *cert, const asn_TYPE_descriptor_t *td, const void *obj,
                       const OCTET_STRING_t *sig)
{
    return sgp32_verify_rs_der(X509_get0_pubkey(cert), td, obj, sig, NULL) == ESIM_OK;
}

/* The eUICC signs the DER of |obj| into |sig| (an OCTET STRING of 64). */
static bool ind_sign(download_op *op, const asn_TYPE_descriptor_t *td, const void *obj,
                     OCTET_STRING_t *sig, unsigned char raw[64])
{
    esim_buf der = {0};
    bool ok = sgp32_encode(td, obj, &der, NULL) == ESIM_OK &&
              sim_euicc_sign(op->ipa->e, der.data, der.len, raw, NULL) == ESIM_OK &&
              OCTET_STRING_fromBuf(sig, (const char *)raw, 64) == 0;
    esim_buf_free(&der);
    return ok;
}

/* An ES10b answer (|td|, a tagged CHOICE) as ESipa carries it: the
 * alternative's TLV, without the CHOICE's own tag |tag|. */
static bool ind_choice_any(uint16_t tag, const asn_TYPE_descriptor_t *td, const void *obj,
                           OpaqueTlv_t *any)
{
    esim_buf der = {0};
    const uint8_t *v;
    size_t n;
    bool ok = sgp32_encode(td, obj, &der, NULL) == ESIM_OK &&
              sgp32_tlv_unwrap(tag, der.data, der.len, &v, &n, NULL) == ESIM_OK &&
              OCTET_STRING_fromBuf((OCTET_STRING_t *)any, (const char *)v, (int)n) == 0;
    esim_buf_free(&der);
    return ok;
}

/* SGP.22: once the server authenticated the eUICC, a refusal ends the
 * session with the eUICC's signed CancelSession (then the failure is
 * reported; the SM-DP+ keeps the order Released). */
static void ind_cancel(download_op *op, long reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ind_cancel(download_op *op, long reason, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    op->dl.err = ESIM_ECRYPTO;
    vsnprintf(op->dl.message, sizeof op->dl.message, fmt, ap);
    va_end(ap);
    EsipaMessageFromIpaToEim_t m = {.present =
                                        EsipaMessageFromIpaToEim_PR_cancelSessionRequestEsipa};
    CancelSessionRequestEsipa_t *c = &m.choice.cancelSessionRequestEsipa;
    CancelSessionResponse_t a = {.present = CancelSessionResponse_PR_cancelSessionResponseOk};
    EuiccCancelSessionSigned_t *s = &a.choice.cancelSessionResponseOk.euiccCancelSessionSigned;
    static const uint32_t oid[] = {2, 999, 10};
    unsigned char sig[64];
    s->reason = reason;
    bool ok =
        OCTET_STRING_fromBuf(&s->transactionId, (const char *)op->txid, (int)op->txid_len) == 0 &&
        OCTET_STRING_fromBuf(&c->transactionId, (const char *)op->txid, (int)op->txid_len) == 0 &&
        OBJECT_IDENTIFIER_set_arcs(&s->smdpOid, oid, sizeof oid[0], 3) == 0 &&
        ind_sign(op, &asn_DEF_EuiccCancelSessionSigned, s,
                 &a.choice.cancelSessionResponseOk.euiccCancelSessionSignature, sig) &&
        ind_choice_any(0xBF41, &asn_DEF_CancelSessionResponse, &a, &c->cancelSessionResponse);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_CancelSessionResponse, &a);
    op->step = IND_CANCEL;
    if (ok)
        ok = ind_post(op, &m);
    else
        ind_fail(op, ESIM_ECRYPTO, "%s", op->dl.message);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &m);
}

static bool ind_initiate(download_op *op)
{
    EsipaMessageFromIpaToEim_t m = {
        .present = EsipaMessageFromIpaToEim_PR_initiateAuthenticationRequestEsipa};
    InitiateAuthenticationRequestEsipa_t *q = &m.choice.initiateAuthenticationRequestEsipa;
    static const uint8_t svn[3] = {2, 2, 0};
    q->smdpAddress = OCTET_STRING_new_fromBuf(&asn_DEF_UTF8String, op->smdp, -1);
    q->euiccInfo1 = calloc(1, sizeof *q->euiccInfo1);
    bool ok = esim_random_bytes(op->challenge, 16) == ESIM_OK && q->smdpAddress && q->euiccInfo1 &&
              OCTET_STRING_fromBuf(&q->euiccChallenge, (const char *)op->challenge, 16) == 0 &&
              OCTET_STRING_fromBuf(&q->euiccInfo1->svn, (const char *)svn, 3) == 0;
    op->step = IND_INITIATE;
    if (ok)
        ok = ind_post(op, &m);
    else
        ind_fail(op, ESIM_ENOMEM, "out of memory");
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &m);
    return ok;
}

static OpaqueTlv_t *any_add(void *list, const void *tlv, size_t len)
{
    OpaqueTlv_t *a = calloc(1, sizeof *a);
    if (a && (OCTET_STRING_fromBuf((OCTET_STRING_t *)a, tlv, (int)len) != 0 ||
              ASN_SEQUENCE_ADD(list, a) != 0)) {
        ASN_STRUCT_FREE(asn_DEF_OpaqueTlv, a);
        return NULL;
    }
    return a;
}

/* ES10b AuthenticateServer: the SM-DP+ checked, euiccSigned1 signed. */
static void ind_after_initiate(download_op *op, InitiateAuthenticationOkEsipa_t *ok)
{
    sim_ipa *ipa = op->ipa;
    esim_buf cert = {0}, cert64 = {0};
    esim_error e = {{0}};
    if (sgp32_encode(&asn_DEF_Certificate, &ok->serverCertificate, &cert, NULL) == ESIM_OK &&
        esim_base64_encode(cert.data, cert.len, &cert64) == ESIM_OK)
        op->server_cert = sim_euicc_verify_server_cert(ipa->e, (const char *)cert64.data, &e);
    esim_buf_free(&cert);
    esim_buf_free(&cert64);
    if (!op->server_cert) {
        ind_fail(op, ESIM_ECRYPTO,
                 "the eUICC refused the SM-DP+: its certificate does not chain to the trusted CI");
        return;
    }
    ServerSigned1_t *s1 = &ok->serverSigned1;
    if (!ind_sig_ok(op->server_cert, &asn_DEF_ServerSigned1, s1, &ok->serverSignature1) ||
        s1->euiccChallenge.size != 16 || memcmp(s1->euiccChallenge.buf, op->challenge, 16) != 0 ||
        (size_t)s1->serverAddress.size != strlen(op->smdp) ||
        memcmp(s1->serverAddress.buf, op->smdp, s1->serverAddress.size) != 0 ||
        s1->transactionId.size > (int)sizeof op->txid) {
        ind_fail(op, ESIM_ECRYPTO,
                 "the eUICC refused the SM-DP+: serverSignature1 invalid or not for its challenge");
        return;
    }
    memcpy(op->txid, s1->transactionId.buf, s1->transactionId.size);
    op->txid_len = (size_t)s1->transactionId.size;

    AuthenticateServerResponse_t a = {.present =
                                          AuthenticateServerResponse_PR_authenticateResponseOk};
    AuthenticateResponseOk_t *r = &a.choice.authenticateResponseOk;
    EuiccSigned1_t *es = &r->euiccSigned1;
    struct CtxParamsForCommonAuthentication *ctx =
        &es->ctxParams1.choice.ctxParamsForCommonAuthentication;
    es->ctxParams1.present = Es9CtxParams1_PR_ctxParamsForCommonAuthentication;
    static const uint8_t tac[] = {0x80, 0x04, 0x35, 0x33, 0x20, 0x11}, caps[] = {0xa1, 0x00};
    const esim_buf *ecert, *eum;
    void *c1 = NULL, *c2 = NULL;
    unsigned char sig[64];
    bool good =
        OCTET_STRING_fromBuf(&es->transactionId, (const char *)op->txid, (int)op->txid_len) == 0 &&
        OCTET_STRING_fromBuf(&es->serverAddress, op->smdp, -1) == 0 &&
        OCTET_STRING_fromBuf(&es->serverChallenge, (const char *)s1->serverChallenge.buf,
                             s1->serverChallenge.size) == 0 &&
        (!op->mid[0] ||
         (ctx->matchingId = OCTET_STRING_new_fromBuf(&asn_DEF_UTF8String, op->mid, -1))) &&
        any_add(&ctx->deviceInfo.list, tac, sizeof tac) &&
        any_add(&ctx->deviceInfo.list, caps, sizeof caps) &&
        sim_euicc_cert_der(ipa->e, &ecert, &eum, NULL) == ESIM_OK &&
        sgp32_decode(&asn_DEF_Certificate, ecert->data, ecert->len, &c1, NULL) == ESIM_OK &&
        sgp32_decode(&asn_DEF_Certificate, eum->data, eum->len, &c2, NULL) == ESIM_OK &&
        ind_sign(op, &asn_DEF_EuiccSigned1, es, &r->euiccSignature1, sig);
    if (c1) {
        r->euiccCertificate = *(Certificate_t *)c1;
        free(c1);
    }
    if (c2) {
        r->eumCertificate = *(Certificate_t *)c2;
        free(c2);
    }
    EsipaMessageFromIpaToEim_t m = {.present =
                                        EsipaMessageFromIpaToEim_PR_authenticateClientRequestEsipa};
    AuthenticateClientRequestEsipa_t *q = &m.choice.authenticateClientRequestEsipa;
    good =
        good &&
        OCTET_STRING_fromBuf(&q->transactionId, (const char *)op->txid, (int)op->txid_len) == 0 &&
        ind_choice_any(0xBF38, &asn_DEF_AuthenticateServerResponse, &a,
                       &q->authenticateServerResponse);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_AuthenticateServerResponse, &a);
    op->step = IND_AUTHENTICATE;
    if (good)
        ind_post(op, &m);
    else
        ind_fail(op, ESIM_EINVAL, "the eUICC could not answer AuthenticateServer");
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &m);
}

/* ES10b PrepareDownload: smdpSigned2 checked, euiccSigned2 signed. */
static void ind_after_authenticate(download_op *op, AuthenticateClientOkDPEsipa_t *ok)
{
    Es9SmdpSigned2_t *s2 = NULL;
    Es9StoreMetadataRequest_t *md = NULL;
    bool valid =
        ind_sig_ok(op->server_cert, &asn_DEF_SmdpSigned2, &ok->smdpSigned2, &ok->smdpSignature2) &&
        (s2 = retyped(&asn_DEF_SmdpSigned2, &ok->smdpSigned2, 0x30, &asn_DEF_Es9SmdpSigned2)) &&
        s2->transactionId.size == (int)op->txid_len &&
        memcmp(s2->transactionId.buf, op->txid, op->txid_len) == 0;
    sgp32_free(&asn_DEF_Es9SmdpSigned2, s2);
    if (!valid) {
        ind_cancel(op, 127, "the eUICC refused the SM-DP+: smdpSignature2 invalid");
        return;
    }
    if (ok->profileMetaData)
        md = retyped(&asn_DEF_StoreMetadataRequest, ok->profileMetaData, 0xBF25,
                     &asn_DEF_Es9StoreMetadataRequest);
    if (!md ||
        sgp32_iccid_from_bytes(md->iccid.buf, md->iccid.size, op->dl.iccid, NULL) != ESIM_OK) {
        sgp32_free(&asn_DEF_Es9StoreMetadataRequest, md);
        ind_cancel(op, 4, "the eUICC refused the profile: no readable profile metadata");
        return;
    }
    sgp32_free(&asn_DEF_Es9StoreMetadataRequest, md);
    PrepareDownloadResponse_t a = {.present = PrepareDownloadResponse_PR_downloadResponseOk};
    EuiccSigned2_t *es = &a.choice.downloadResponseOk.euiccSigned2;
    uint8_t otpk[65];
    otpk[0] = 0x04;
    EsipaMessageFromIpaToEim_t m = {
        .present = EsipaMessageFromIpaToEim_PR_getBoundProfilePackageRequestEsipa};
    GetBoundProfilePackageRequestEsipa_t *q = &m.choice.getBoundProfilePackageRequestEsipa;
    bool good =
        esim_random_bytes(otpk + 1, 64) == ESIM_OK &&
        OCTET_STRING_fromBuf(&es->transactionId, (const char *)op->txid, (int)op->txid_len) == 0 &&
        OCTET_STRING_fromBuf(&es->euiccOtpk, (const char *)otpk, sizeof otpk) == 0 &&
        ind_sign(op, &asn_DEF_EuiccSigned2, es, &a.choice.downloadResponseOk.euiccSignature2,
                 op->sig2) &&
        OCTET_STRING_fromBuf(&q->transactionId, (const char *)op->txid, (int)op->txid_len) == 0 &&
        ind_choice_any(0xBF21, &asn_DEF_PrepareDownloadResponse, &a, &q->prepareDownloadResponse);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_PrepareDownloadResponse, &a);
    op->step = IND_BPP;
    if (good)
        ind_post(op, &m);
    else
        ind_fail(op, ESIM_EINVAL, "the eUICC could not answer PrepareDownload");
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromIpaToEim, &m);
}

static void ind_notify_next(download_op *op);

/* ES10b LoadBoundProfilePackage: smdpSign checked, the profile installed. */
static void ind_after_bpp(download_op *op, GetBoundProfilePackageOkEsipa_t *ok)
{
    Es9BoundProfilePackage_t *b = retyped(&asn_DEF_BoundProfilePackage, &ok->boundProfilePackage,
                                          0xBF36, &asn_DEF_Es9BoundProfilePackage);
    esim_buf input = {0};
    OCTET_STRING_t sig2 = {.buf = op->sig2, .size = 64};
    const InitialiseSecureChannelRequest_t *i = b ? &b->initialiseSecureChannelRequest : NULL;
    Es9StoreMetadataRequest_t *md = NULL;
    bool valid =
        i && i->transactionId.size == (int)op->txid_len &&
        memcmp(i->transactionId.buf, op->txid, op->txid_len) == 0 && i->smdpSign.size == 64 &&
        sgp32_bpp_sign_input(b, &sig2, &input) == ESIM_OK &&
        sim_ecdsa_verify_raw(X509_get0_pubkey(op->server_cert), input.data, input.len,
                             i->smdpSign.buf, 64, NULL) == ESIM_OK &&
        b->sequenceOf88.list.count == 1 &&
        sgp32_decode(&asn_DEF_Es9StoreMetadataRequest, b->sequenceOf88.list.array[0]->buf,
                     (size_t)b->sequenceOf88.list.array[0]->size, (void **)&md, NULL) == ESIM_OK;
    esim_buf_free(&input);
    sim_profile p = {0};
    char iccid[21] = "";
    if (valid)
        valid = sgp32_iccid_from_bytes(md->iccid.buf, md->iccid.size, iccid, NULL) == ESIM_OK &&
                strcmp(iccid, op->dl.iccid) == 0 &&
                md->serviceProviderName.size < (int)sizeof p.service_provider &&
                md->profileName.size < (int)sizeof p.profile_name;
    if (valid) {
        p.profile_class = SIM_CLASS_OPERATIONAL;
        snprintf(p.iccid, sizeof p.iccid, "%s", iccid);
        memcpy(p.service_provider, md->serviceProviderName.buf, md->serviceProviderName.size);
        memcpy(p.profile_name, md->profileName.buf, md->profileName.size);
        snprintf(p.nickname, sizeof p.nickname, "%s", p.service_provider);
        snprintf(p.smdp_address, sizeof p.smdp_address, "%.127s", op->smdp);
        if (md->profilePolicyRules && md->profilePolicyRules->size > 0)
            p.ppr = (unsigned)(md->profilePolicyRules->buf[0] >> 5) & (SIM_PPR1 | SIM_PPR2);
    }
    sgp32_free(&asn_DEF_Es9StoreMetadataRequest, md);
    sgp32_free(&asn_DEF_Es9BoundProfilePackage, b);
    if (!valid) {
        /* The SM-DP+ already counts the order Downloaded: it serves this
         * eUICC again on its next attempt (a download retry). */
        ind_fail(op, ESIM_ECRYPTO,
                 "the eUICC refused the bound profile package: bad signature, not bound to it or "
                 "not the announced profile");
        return;
    }
    sim_result res;
    esim_error e;
    /* Its install notification (a ProfileInstallationResult) names the session. */
    if (op->txid_len == 16)
        sim_euicc_set_session(op->ipa->e, op->txid);
    if (sim_euicc_install(op->ipa->e, &p, &res, &e) != ESIM_OK || res != SIM_RES_OK) {
        ind_fail(op, ESIM_ESTATE, "the eUICC refused the profile: %s",
                 res != SIM_RES_OK ? sim_result_name(res) : e.msg);
        return;
    }
    op->dl.err = ESIM_OK;
    op->notified = 0;
    ind_notify_next(op);
}

/* The eUICC's pending notifications for this SM-DP+ (ES10b
 * RetrieveNotificationsList), each as BF3D through the eIM; the SM-DP+
 * confirms each (HTTP 204) and the IPA removes it from the eUICC. */
static void ind_notify_next(download_op *op)
{
    sim_ipa *ipa = op->ipa;
    static const uint8_t list_req[] = {0xbf, 0x2b, 0x00};
    esim_buf ans = {0};
    RetrieveNotificationsListResponse_t *l = NULL;
    PendingNotification_t *pn = NULL;
    if (es10(ipa, list_req, sizeof list_req, &ans, NULL) == ESIM_OK &&
        sgp32_decode_explicit(SGP32_TAG_NOTIFICATIONS_LIST,
                              &asn_DEF_RetrieveNotificationsListResponse, ans.data, ans.len,
                              (void **)&l, NULL) == ESIM_OK &&
        l->present == RetrieveNotificationsListResponse_PR_notificationList) {
        for (int k = 0; k < l->choice.notificationList.list.count && !pn; k++) {
            PendingNotification_t *c = l->choice.notificationList.list.array[k];
            const NotificationMetadata_t *md =
                c->present == PendingNotification_PR_profileInstallationResult
                    ? &c->choice.profileInstallationResult.profileInstallationResultData
                           .notificationMetadata
                    : &c->choice.otherSignedNotification.tbsOtherNotification;
            if ((size_t)k >= op->notified &&
                (size_t)md->notificationAddress.size == strlen(op->smdp) &&
                memcmp(md->notificationAddress.buf, op->smdp, strlen(op->smdp)) == 0) {
                pn = c;
                op->notified = (size_t)k + 1;
                op->notify_seq = md->seqNumber;
            }
        }
    }
    esim_buf_free(&ans);
    if (!pn) {
        sgp32_free(&asn_DEF_RetrieveNotificationsListResponse, l);
        X509_free(op->server_cert);
        op->server_cert = NULL;
        ipa->indirect = NULL;
        send_download_result(op);
        return;
    }
    EsipaMessageFromIpaToEim_t m = {.present = EsipaMessageFromIpaToEim_PR_handleNotificationEsipa};
    m.choice.handleNotificationEsipa.present = HandleNotificationEsipa_PR_pendingNotification;
    m.choice.handleNotificationEsipa.choice.pendingNotification = *pn;
    esim_buf body = {0};
    op->step = IND_NOTIFY;
    esim_err rc = sgp32_encode(&asn_DEF_EsipaMessageFromIpaToEim, &m, &body, NULL);
    sgp32_free(&asn_DEF_RetrieveNotificationsListResponse, l); /* pn was borrowed */
    if (rc != ESIM_OK || post(ipa, &body, on_indirect) != ESIM_OK) {
        /* The notification stays on the eUICC for a later attempt. */
        X509_free(op->server_cert);
        op->server_cert = NULL;
        ipa->indirect = NULL;
        send_download_result(op);
    }
    esim_buf_free(&body);
}

/* ESipa error codes in words (v1.0 names). */
static const char *ind_error_name(int step, long code)
{
    switch (step) {
    case IND_INITIATE:
        return code == 1    ? "invalidDpAddress"
               : code == 2  ? "euiccVersionNotSupportedByDp"
               : code == 3  ? "ciPKIdNotSupported"
               : code == 50 ? "smdpAddressMismatch"
               : code == 51 ? "smdpOidMismatch"
                            : "undefinedError";
    case IND_AUTHENTICATE:
        return code == 1    ? "eumCertificateInvalid"
               : code == 3  ? "euiccCertificateInvalid"
               : code == 5  ? "euiccSignatureInvalid"
               : code == 6  ? "matchingIdRefused"
               : code == 7  ? "eidMismatch"
               : code == 8  ? "noEligibleProfile"
               : code == 10 ? "invalidTransactionId"
                            : "undefinedError";
    default:
        return code == 1    ? "euiccSignatureInvalid"
               : code == 5  ? "bppRebindingRefused"
               : code == 6  ? "downloadOrderExpired"
               : code == 95 ? "invalidTransactionId"
                            : "undefinedError";
    }
}

static void on_indirect(void *arg, sim_http_response *r)
{
    sim_ipa *ipa = arg;
    download_op *op = ipa->indirect;
    static const char *const fn[] = {"",
                                     "initiateAuthentication",
                                     "authenticateClient",
                                     "getBoundProfilePackage",
                                     "cancelSession",
                                     "handleNotification"};
    if (op->step == IND_NOTIFY) {
        /* 204: the SM-DP+ has it; the eUICC drops it (RemoveNotificationFromList). */
        if (r->err == ESIM_OK && r->status == 204) {
            NotificationSentRequest_t ns = {.seqNumber = op->notify_seq};
            esim_buf req = {0}, ans = {0};
            if (sgp32_encode(&asn_DEF_NotificationSentRequest, &ns, &req, NULL) == ESIM_OK &&
                es10(ipa, req.data, req.len, &ans, NULL) == ESIM_OK)
                op->notified--; /* the list shrank */
            esim_buf_free(&req);
            esim_buf_free(&ans);
        }
        ind_notify_next(op);
        return;
    }
    if (op->step == IND_CANCEL) {
        ind_fail(op, op->dl.err, "%s", op->dl.message);
        return;
    }
    if (r->err != ESIM_OK || r->status != 200) {
        if (r->err != ESIM_OK)
            ind_fail(op, ESIM_EUNAVAIL, "indirect download: eIM unreachable: %s", r->errmsg);
        else
            ind_fail(op, ESIM_EPROTO, "indirect download: the eIM answered %s with HTTP %ld",
                     fn[op->step], r->status);
        return;
    }
    EsipaMessageFromEimToIpa_t *m = NULL;
    esim_error e;
    if (sgp32_decode(&asn_DEF_EsipaMessageFromEimToIpa, r->body.data, r->body.len, (void **)&m,
                     &e) != ESIM_OK) {
        ind_fail(op, ESIM_EPROTO, "indirect download: the eIM's %s answer: %s", fn[op->step],
                 e.msg);
        return;
    }
    long code = -1;
    switch (op->step) {
    case IND_INITIATE:
        if (m->present != EsipaMessageFromEimToIpa_PR_initiateAuthenticationResponseEsipa)
            break;
        if (m->choice.initiateAuthenticationResponseEsipa.present ==
            InitiateAuthenticationResponseEsipa_PR_initiateAuthenticationOkEsipa) {
            ind_after_initiate(op, &m->choice.initiateAuthenticationResponseEsipa.choice
                                        .initiateAuthenticationOkEsipa);
            code = -2;
        } else {
            code = m->choice.initiateAuthenticationResponseEsipa.choice
                       .initiateAuthenticationErrorEsipa;
        }
        break;
    case IND_AUTHENTICATE:
        if (m->present != EsipaMessageFromEimToIpa_PR_authenticateClientResponseEsipa)
            break;
        if (m->choice.authenticateClientResponseEsipa.present ==
            AuthenticateClientResponseEsipa_PR_authenticateClientOkDPEsipa) {
            ind_after_authenticate(
                op, &m->choice.authenticateClientResponseEsipa.choice.authenticateClientOkDPEsipa);
            code = -2;
        } else if (m->choice.authenticateClientResponseEsipa.present ==
                   AuthenticateClientResponseEsipa_PR_authenticateClientErrorEsipa) {
            code = m->choice.authenticateClientResponseEsipa.choice.authenticateClientErrorEsipa;
        }
        break;
    case IND_BPP:
        if (m->present != EsipaMessageFromEimToIpa_PR_getBoundProfilePackageResponseEsipa)
            break;
        if (m->choice.getBoundProfilePackageResponseEsipa.present ==
            GetBoundProfilePackageResponseEsipa_PR_getBoundProfilePackageOkEsipa) {
            ind_after_bpp(op, &m->choice.getBoundProfilePackageResponseEsipa.choice
                                   .getBoundProfilePackageOkEsipa);
            code = -2;
        } else {
            code = m->choice.getBoundProfilePackageResponseEsipa.choice
                       .getBoundProfilePackageErrorEsipa;
        }
        break;
    }
    if (code >= 0)
        ind_fail(op, ESIM_EAUTH, "indirect download: the eIM relayed %s: %s (%ld)", fn[op->step],
                 ind_error_name(op->step, code), code);
    else if (code == -1)
        ind_fail(op, ESIM_EPROTO, "indirect download: the eIM did not answer %s", fn[op->step]);
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, m);
}

/* "[LPA:]1$SMDP$MATCHING" -> the SM-DP+ address and matching ID. */
static bool split_code(const char *code, char *smdp, size_t smdp_len, char *mid, size_t mid_len)
{
    if (strncmp(code, "LPA:", 4) == 0)
        code += 4;
    if (strncmp(code, "1$", 2) != 0)
        return false;
    const char *a = code + 2, *d = strchr(a, '$');
    size_t alen = d ? (size_t)(d - a) : strlen(a);
    if (alen == 0 || alen >= smdp_len)
        return false;
    memcpy(smdp, a, alen);
    smdp[alen] = '\0';
    mid[0] = '\0';
    if (d) {
        const char *m = d + 1, *end = strchr(m, '$');
        size_t mlen = end ? (size_t)(end - m) : strlen(m);
        if (mlen >= mid_len)
            return false;
        memcpy(mid, m, mlen);
        mid[mlen] = '\0';
    }
    return true;
}

static void run_download(sim_ipa *ipa, ProfileDownloadTriggerRequest_t *t)
{
    download_op *op = calloc(1, sizeof *op);
    if (!op) {
        finish(ipa, ESIM_ENOMEM, "out of memory");
        return;
    }
    op->ipa = ipa;
    op->eim_txid = t->eimTransactionId; /* moved into the result */
    t->eimTransactionId = NULL;
    char *mid = op->mid, url[600];
    op->dl.err = ESIM_EINVAL;
    if (!t->profileDownloadData ||
        t->profileDownloadData->present != ProfileDownloadData_PR_activationCode ||
        !split_code((const char *)t->profileDownloadData->choice.activationCode.buf, op->smdp,
                    sizeof op->smdp, mid, sizeof op->mid)) {
        snprintf(op->dl.message, sizeof op->dl.message,
                 "the trigger carries no activation code this IPA understands");
        send_download_result(op);
        return;
    }
    if (ipa->fail_downloads) {
        op->dl.err = ESIM_EUNAVAIL;
        snprintf(op->dl.message, sizeof op->dl.message,
                 "simulated failure: no data connection to %.180s", op->smdp);
        send_download_result(op);
        return;
    }
    if (ipa->indirect_downloads) {
        ipa->indirect = op;
        ind_initiate(op);
        return;
    }
    /* Where the SM-DP+ is, as DNS would say (devsim's --smdp-resolve). */
    const char *to = NULL;
    for (size_t k = 0; k < ipa->n_resolve && !to; k++) {
        const char *eq = strchr(ipa->resolve[k], '=');
        if (eq && (size_t)(eq - ipa->resolve[k]) == strlen(op->smdp) &&
            strncmp(ipa->resolve[k], op->smdp, strlen(op->smdp)) == 0)
            to = eq + 1;
    }
    for (size_t k = 0; k < ipa->n_resolve && !to; k++)
        if (strncmp(ipa->resolve[k], "*=", 2) == 0 && !strchr(op->smdp, ':'))
            to = ipa->resolve[k] + 2;
    snprintf(url, sizeof url, "https://%s", to ? to : op->smdp);
    esim_error e;
    if (sim_lpa_download(ipa->http, ipa->e, &ipa->es9, url, ipa->ca_file[0] ? ipa->ca_file : NULL,
                         mid[0] ? mid : NULL, after_download, op, &e) != ESIM_OK) {
        op->dl.err = ESIM_EUNAVAIL;
        snprintf(op->dl.message, sizeof op->dl.message, "%.200s", e.msg);
        send_download_result(op);
    }
}

static void on_package(void *arg, sim_http_response *r)
{
    sim_ipa *ipa = arg;
    EsipaMessageFromEimToIpa_t *m = eim_answer(ipa, r);
    if (!m)
        return;
    if (m->present != EsipaMessageFromEimToIpa_PR_getEimPackageResponse) {
        sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, m);
        finish(ipa, ESIM_EPROTO, "the eIM did not answer the poll with a package or an error");
        return;
    }
    GetEimPackageResponse_t *p = &m->choice.getEimPackageResponse;
    ipa->res.polls++;
    switch (p->present) {
    case GetEimPackageResponse_PR_euiccPackageRequest: {
        /* The BF51 inside BF4F, exactly as it came. */
        const uint8_t *b = r->body.data;
        size_t hdr = 2 + (b[2] < 0x80 ? 1 : 1 + (b[2] & 0x7f));
        ipa->packages++;
        run_euicc_package(ipa, b + hdr, r->body.len - hdr);
        break;
    }
    case GetEimPackageResponse_PR_ipaEuiccDataRequest:
        ipa->packages++;
        run_data_request(ipa);
        break;
    case GetEimPackageResponse_PR_profileDownloadTriggerRequest:
        ipa->packages++;
        run_download(ipa, &p->choice.profileDownloadTriggerRequest);
        break;
    default:
        if (p->choice.eimPackageError ==
            GetEimPackageResponse__eimPackageError_noEimPackageAvailable)
            finish(ipa, ESIM_OK, NULL);
        else
            finish(ipa, ESIM_EPROTO, "the eIM answered eimPackageError %ld",
                   p->choice.eimPackageError);
        break;
    }
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, m);
}

/* ProvideEimPackageResultResponse: remove each acknowledged notification
 * from the eUICC (ES10b RemoveNotificationFromList), then poll again. */
static void on_ack(void *arg, sim_http_response *r)
{
    sim_ipa *ipa = arg;
    EsipaMessageFromEimToIpa_t *m = eim_answer(ipa, r);
    if (!m)
        return;
    if (m->present != EsipaMessageFromEimToIpa_PR_provideEimPackageResultResponse) {
        sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, m);
        finish(ipa, ESIM_EPROTO, "the eIM did not acknowledge the result");
        return;
    }
    EimAcknowledgements_t *acks = m->choice.provideEimPackageResultResponse.eimAcknowledgements;
    esim_buf req = {0}, ans = {0};
    for (int i = 0; acks && i < acks->list.count; i++) {
        NotificationSentRequest_t ns = {.seqNumber = *acks->list.array[i]};
        esim_buf_reset(&req);
        if (sgp32_encode(&asn_DEF_NotificationSentRequest, &ns, &req, NULL) == ESIM_OK &&
            es10(ipa, req.data, req.len, &ans, NULL) == ESIM_OK)
            ipa->res.acknowledged++;
    }
    esim_buf_free(&req);
    esim_buf_free(&ans);
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, m);
    if (ipa->packages >= MAX_PACKAGES_PER_CYCLE)
        finish(ipa, ESIM_OK, NULL);
    else
        poll_next(ipa);
}
