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
    bool busy;
    sim_http_conn *conn; /* one device, one connection, for a poll cycle */
    sim_ipa_cb cb;
    void *cb_arg;
    sim_ipa_poll_result res;
    unsigned packages;
    char eim_txid[40]; /* the trigger's eimTransactionId, hex */
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
    *out = ipa;
    return ESIM_OK;
}

void sim_ipa_free(sim_ipa *ipa)
{
    if (ipa)
        sim_http_conn_free(ipa->conn);
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
    sim_http_conn_free(ipa->conn);
    ipa->conn = NULL;
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
                            .conn = ipa->conn};
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
    if (sim_http_conn_new(&ipa->conn, err) != ESIM_OK)
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

typedef struct {
    sim_ipa *ipa;
    TransactionId_t *eim_txid;
    char smdp[256];
    sim_download_result dl;
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
        sim_lpa_send_notifications(op->ipa->http, op->ipa->e,
                                   op->ipa->ca_file[0] ? op->ipa->ca_file : NULL,
                                   after_notifications, op, &e) != ESIM_OK)
        send_download_result(op);
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
    char mid[256] = "", url[600];
    op->dl.err = ESIM_EINVAL;
    if (!t->profileDownloadData ||
        t->profileDownloadData->present != ProfileDownloadData_PR_activationCode ||
        !split_code((const char *)t->profileDownloadData->choice.activationCode.buf, op->smdp,
                    sizeof op->smdp, mid, sizeof mid)) {
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
    if (sim_lpa_download(ipa->http, ipa->e, url, ipa->ca_file[0] ? ipa->ca_file : NULL,
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
