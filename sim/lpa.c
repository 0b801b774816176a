/*
 * lpa.c — the device's Local Profile Assistant: drives an SGP.22 ES9+ profile
 * download from an SM-DP+ (mutual authentication, bound profile package,
 * install on the virtual eUICC) and delivers the eUICC's pending
 * notifications, all asynchronously on the simulator's sim_http client, on
 * the device's own connection with its own TLS session (sim_lpa_link).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/sim_internal.h"

#define ES9_PATH "/gsma/rsp2/es9plus/"

struct sim_lpa_link {
    sim_http_conn *conn;  /* open while the device's LPA works; NULL: none */
    sim_tls_session *tls; /* its TLS session with the SM-DP+ */
    /* Its holder's (until sim_lpa_link_free), each LPA call's running on it
     * and each request's in flight: the last one frees it. */
    unsigned refs;
    unsigned calls; /* LPA calls running on it */
    bool freed;     /* the holder let go (or there is none: a call's own) */
};

/* The link in *slot (made when none; slot NULL: one for this call only),
 * with an LPA call running on it. NULL: out of memory. */
static sim_lpa_link *link_begin(sim_lpa_link **slot)
{
    sim_lpa_link *l = slot ? *slot : NULL;
    if (!l) {
        if (!(l = calloc(1, sizeof *l)))
            return NULL;
        if (slot) {
            l->refs = 1; /* the holder's */
            *slot = l;
        } else {
            l->freed = true;
        }
    }
    l->refs++;
    l->calls++;
    return l;
}

static void link_unref(sim_lpa_link *l)
{
    if (--l->refs > 0)
        return;
    /* No request in flight: its connection (idle, if open) closes now,
     * before the session it points at goes. */
    sim_http_conn_free(l->conn);
    sim_tls_session_free(l->tls);
    free(l);
}

/* An LPA call on |l| ends. Its connection closes when no other call runs,
 * unless |hold|: a download installed a profile and the device's
 * notifications come next, on the same connection. */
static void link_end(sim_lpa_link *l, bool hold)
{
    if (--l->calls == 0 && (!hold || l->freed)) {
        sim_http_conn_free(l->conn); /* after the request it carries, if any */
        l->conn = NULL;
    }
    link_unref(l);
}

void sim_lpa_link_forget(sim_lpa_link *l)
{
    if (l)
        sim_tls_session_forget(l->tls);
}

void sim_lpa_link_free(sim_lpa_link *l)
{
    if (!l || l->freed)
        return;
    l->freed = true;
    if (l->calls == 0) {
        sim_http_conn_free(l->conn);
        l->conn = NULL;
    }
    link_unref(l);
}

/* Sends |req| on the device's connection with its TLS session; the
 * request holds the link until |cb| has run (the callback must call
 * link_unref last). */
static esim_err link_send(sim_lpa_link *l, sim_http *h, sim_http_request *req, sim_http_cb cb,
                          void *arg, esim_error *err)
{
    if (!l->conn)
        sim_http_conn_new(&l->conn, NULL); /* none (out of memory): a connection of its own */
    req->conn = l->conn;
    req->tls = &l->tls;
    l->refs++;
    esim_err rc = sim_http_send(h, req, cb, arg, err);
    if (rc != ESIM_OK)
        l->refs--; /* the call's reference keeps it */
    return rc;
}

typedef enum { STEP_INITIATE = 1, STEP_AUTHENTICATE, STEP_BPP } lpa_step;

typedef struct {
    sim_http *h;
    sim_euicc *e;
    sim_lpa_link *link;     /* the device's (a call's reference) */
    char base[512];         /* https://host:port */
    char smdp_address[128]; /* host:port, as the eUICC names the server */
    char ca_file[SIM_PATH_MAX];
    char matching_id[65];
    unsigned char euicc_challenge[16];
    char txid[64];
    X509 *server_cert; /* the SM-DP+ certificate, verified against the CI */
    lpa_step step;
    bool restarted; /* the session was started again once */
    sim_download_cb cb;
    void *arg;
    sim_download_result res;
} lpa_op;

/* https://HOST[:PORT][/...] -> base "https://HOST:PORT" and address "HOST:PORT". */
static esim_err split_url(const char *url, char *base, size_t base_len, char *addr, size_t addr_len,
                          esim_error *err)
{
    const char *p;
    if (!url || strncmp(url, "https://", 8) != 0)
        return esim_fail(err, ESIM_EINVAL, "SM-DP+ URL must start with https://");
    p = url + 8;
    size_t n = strcspn(p, "/?#");
    if (n == 0 || n >= addr_len || n + 8 >= base_len)
        return esim_fail(err, ESIM_EINVAL, "SM-DP+ URL has no host or is too long");
    memcpy(addr, p, n);
    addr[n] = '\0';
    if (!strchr(addr, ':')) {
        if (n + 4 >= addr_len)
            return esim_fail(err, ESIM_EINVAL, "SM-DP+ URL is too long");
        strcat(addr, ":443");
    }
    snprintf(base, base_len, "https://%s", addr);
    return ESIM_OK;
}

static void finish(lpa_op *op)
{
    X509_free(op->server_cert);
    sim_download_cb cb = op->cb;
    void *arg = op->arg;
    sim_download_result r = op->res;
    link_end(op->link, r.err == ESIM_OK);
    free(op);
    cb(arg, &r);
}

static void fail_op(lpa_op *op, esim_err code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail_op(lpa_op *op, esim_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    op->res.err = code;
    vsnprintf(op->res.message, sizeof op->res.message, fmt, ap);
    va_end(ap);
    finish(op);
}

static void on_response(void *arg, sim_http_response *r);

static void ignore_answer(void *arg, sim_http_response *r)
{
    (void)r;
    link_unref(arg);
}

/* POSTs |body| (consumed) to ES9+ function |fn|; |cb| NULL: nobody waits. */
static esim_err post_to(lpa_op *op, const char *fn, json_t *body, sim_http_cb cb, void *arg,
                        esim_error *err);

static esim_err post(lpa_op *op, const char *fn, json_t *body, esim_error *err)
{
    return post_to(op, fn, body, on_response, op, err);
}

static esim_err post_to(lpa_op *op, const char *fn, json_t *body, sim_http_cb cb, void *arg,
                        esim_error *err)
{
    esim_buf b = {0};
    esim_err rc = sim_json_dump(body, &b);
    json_decref(body);
    if (rc != ESIM_OK)
        return esim_fail(err, rc, "out of memory");
    char url[600];
    snprintf(url, sizeof url, "%s" ES9_PATH "%s", op->base, fn);
    static const char *const hdrs[] = {"Content-Type: application/json",
                                       "X-Admin-Protocol: gsma/rsp/v2.2.0",
                                       "User-Agent: esim-mdm-devsim LPA"};
    sim_http_request req = {.method = "POST",
                            .url = url,
                            .headers = hdrs,
                            .n_headers = 3,
                            .body = b.data,
                            .body_len = b.len,
                            .ca_file = op->ca_file,
                            /* 20 s without progress once its connection
                             * starts on it (sim_http_request) */
                            .timeout_ms = 20000};
    rc = link_send(op->link, op->h, &req, cb ? cb : ignore_answer, cb ? arg : op->link, err);
    esim_buf_free(&b);
    return rc;
}

/* Checks an ES9+ answer, |j| its body parsed (consumed); on Failed copies
 * the status codes into the result. */
static json_t *parse_answer(lpa_op *op, sim_http_response *r, json_t *j)
{
    if (r->err != ESIM_OK) {
        json_decref(j);
        op->res.host_unknown = r->host_unknown;
        fail_op(op, ESIM_EUNAVAIL, "SM-DP+ unreachable: %s", r->errmsg);
        return NULL;
    }
    if (r->status != 200) {
        json_decref(j);
        char s[32];
        snprintf(s, sizeof s, "%ld", r->status);
        fail_op(op, ESIM_EPROTO, "SM-DP+ answered HTTP %s", s);
        return NULL;
    }
    json_t *st = json_object_get(json_object_get(j, "header"), "functionExecutionStatus");
    const char *status = sim_json_str(st, "status");
    if (!json_is_object(j) || !status) {
        json_decref(j);
        fail_op(op, ESIM_EPROTO, "SM-DP+ answer is not an ES9+ JSON response");
        return NULL;
    }
    if (strcmp(status, "Executed-Success") != 0) {
        json_t *scd = json_object_get(st, "statusCodeData");
        snprintf(op->res.subject_code, sizeof op->res.subject_code, "%s",
                 sim_json_str(scd, "subjectCode") ? sim_json_str(scd, "subjectCode") : "?");
        snprintf(op->res.reason_code, sizeof op->res.reason_code, "%s",
                 sim_json_str(scd, "reasonCode") ? sim_json_str(scd, "reasonCode") : "?");
        char msg[200];
        snprintf(msg, sizeof msg, "%s/%s %s", op->res.subject_code, op->res.reason_code,
                 sim_json_str(scd, "message") ? sim_json_str(scd, "message") : "");
        json_decref(j);
        fail_op(op, ESIM_EAUTH, "SM-DP+ refused: %s", msg);
        return NULL;
    }
    return j;
}

/* The base64 JSON blob at |key| with its raw bytes, verified against |sig_key|
 * by |cert|'s key. NULL when anything is off. */
static json_t *verified_blob(const lpa_op *op, const json_t *o, const char *key,
                             const char *sig_key, X509 *cert)
{
    esim_buf raw = {0}, sig = {0};
    json_t *blob = NULL;
    if (cert && sim_json_b64(o, key, &raw, NULL) == ESIM_OK &&
        sim_json_b64(o, sig_key, &sig, NULL) == ESIM_OK &&
        sim_euicc_verify_by(op->e, cert, raw.data, raw.len, sig.data, sig.len) == ESIM_OK) {
        blob = sim_json_loadb((const char *)raw.data, raw.len);
        if (!json_is_object(blob)) {
            json_decref(blob);
            blob = NULL;
        }
    }
    esim_buf_free(&raw);
    esim_buf_free(&sig);
    return blob;
}

/* Adds |blob| (as compact JSON, base64) and the eUICC's raw signature of it. */
static esim_err euicc_sign_into(lpa_op *op, json_t *dst, const char *key, const char *sig_key,
                                json_t *blob)
{
    esim_buf raw = {0};
    unsigned char sig[64];
    esim_err rc = sim_json_dump(blob, &raw);
    json_decref(blob);
    if (rc == ESIM_OK)
        rc = sim_euicc_sign(op->e, raw.data, raw.len, sig, NULL);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(dst, key, raw.data, raw.len);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(dst, sig_key, sig, sizeof sig);
    esim_buf_free(&raw);
    return rc;
}

static bool str_eq(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* SGP.22: when the eUICC refuses the SM-DP+ after the session began, the
 * LPA ends it with CancelSession, signed by the eUICC once the server has
 * authenticated it. Nobody waits for the answer. */
static void cancel_session(lpa_op *op, const char *reason)
{
    json_t *body = json_pack("{s:s}", "transactionId", op->txid);
    if (!body)
        return;
    if (op->step >= STEP_AUTHENTICATE) {
        json_t *c = json_object();
        json_t *signed_c = json_pack("{s:s, s:s}", "transactionId", op->txid, "reason", reason);
        if (!c || !signed_c ||
            euicc_sign_into(op, c, "euiccCancelSessionSigned", "euiccCancelSessionSignature",
                            signed_c) != ESIM_OK) {
            json_decref(c);
            json_decref(body);
            return;
        }
        json_object_set_new(body, "cancelSessionResponse", c);
    }
    post_to(op, "cancelSession", body, NULL, NULL, NULL);
}

/* SGP.22: a profile the eUICC could not install is reported to the SM-DP+
 * (ProfileInstallationResult with an error), which marks the order Error. */
static void report_install_failure(lpa_op *op, const char *iccid, const char *result)
{
    json_t *pn = json_pack("{s:i, s:s, s:s, s:s, s:s}", "seqNumber", 0, "event", "install", "iccid",
                           iccid, "notificationAddress", op->smdp_address, "result", result);
    json_t *body = json_object();
    esim_buf ecert = {0}, eum = {0};
    bool ok =
        pn && body && sim_euicc_cert_b64(op->e, &ecert, &eum) == ESIM_OK &&
        json_object_set_new(body, "euiccCertificate", json_string((const char *)ecert.data)) == 0 &&
        json_object_set_new(body, "eumCertificate", json_string((const char *)eum.data)) == 0;
    esim_buf_free(&ecert);
    esim_buf_free(&eum);
    if (ok && euicc_sign_into(op, body, "pendingNotification", "euiccNotificationSignature", pn) ==
                  ESIM_OK)
        post_to(op, "handleNotification", body, NULL, NULL, NULL);
    else
        json_decref(body);
    if (!ok)
        json_decref(pn);
}

/* The eUICC's side of mutual authentication (ES10b AuthenticateServer). */
static void after_initiate(lpa_op *op, json_t *j)
{
    const char *txid = sim_json_str(j, "transactionId");
    esim_error e2;
    X509 *cert =
        txid && strlen(txid) < sizeof op->txid
            ? sim_euicc_verify_server_cert(op->e, sim_json_str(j, "serverCertificate"), &e2)
            : NULL;
    if (!cert) {
        X509_free(cert);
        if (txid && strlen(txid) < sizeof op->txid) {
            snprintf(op->txid, sizeof op->txid, "%s", txid);
            cancel_session(op, "invalidServerCertificate");
        }
        fail_op(op, ESIM_ECRYPTO,
                "the eUICC refused the SM-DP+: its certificate does not chain to the trusted CI");
        return;
    }
    op->server_cert = cert;
    snprintf(op->txid, sizeof op->txid, "%s", txid);
    json_t *s1 = verified_blob(op, j, "serverSigned1", "serverSignature1", cert);
    esim_buf chal = {0};
    esim_base64_encode(op->euicc_challenge, 16, &chal);
    bool ok = s1 && str_eq(sim_json_str(s1, "transactionId"), txid) &&
              str_eq(sim_json_str(s1, "euiccChallenge"), (const char *)chal.data) &&
              str_eq(sim_json_str(s1, "serverAddress"), op->smdp_address) &&
              sim_json_str(s1, "serverChallenge");
    esim_buf_free(&chal);
    if (!ok) {
        json_decref(s1);
        cancel_session(op, "invalidServerSignature");
        fail_op(op, ESIM_ECRYPTO,
                "the eUICC refused the SM-DP+: serverSignature1 invalid or not for its challenge");
        return;
    }
    json_t *ctx = json_pack("{s:{s:s, s:s}}", "deviceInfo", "tac", "35332011", "deviceCapabilities",
                            "gsm,utran,eutran,nr");
    if (op->matching_id[0])
        json_object_set_new(ctx, "matchingId", json_string(op->matching_id));
    json_t *signed1 =
        json_pack("{s:s, s:s, s:s, s:{s:s, s:s}, s:o}", "transactionId", txid, "serverAddress",
                  op->smdp_address, "serverChallenge", sim_json_str(s1, "serverChallenge"),
                  "euiccInfo2", "profileVersion", "2.3.1", "svn", "2.2.0", "ctxParams1", ctx);
    json_decref(s1);
    esim_buf ecert = {0}, eum = {0};
    json_t *asr = json_object();
    esim_err rc = signed1 && asr ? sim_euicc_cert_b64(op->e, &ecert, &eum) : ESIM_ENOMEM;
    if (rc == ESIM_OK) {
        json_object_set_new(asr, "euiccCertificate", json_string((const char *)ecert.data));
        json_object_set_new(asr, "eumCertificate", json_string((const char *)eum.data));
        rc = euicc_sign_into(op, asr, "euiccSigned1", "euiccSignature1", signed1);
        signed1 = NULL;
    }
    json_decref(signed1);
    esim_buf_free(&ecert);
    esim_buf_free(&eum);
    if (rc != ESIM_OK) {
        json_decref(asr);
        fail_op(op, rc, "the eUICC could not sign");
        return;
    }
    op->step = STEP_AUTHENTICATE;
    if (post(op, "authenticateClient",
             json_pack("{s:s, s:o}", "transactionId", txid, "authenticateServerResponse", asr),
             &e2) != ESIM_OK)
        fail_op(op, ESIM_EUNAVAIL, "%s", e2.msg);
}

static void after_authenticate(lpa_op *op, json_t *j)
{
    json_t *s2 = verified_blob(op, j, "smdpSigned2", "smdpSignature2", op->server_cert);
    const char *iccid = sim_json_str(json_object_get(j, "profileMetadata"), "iccid");
    if (!s2 || !str_eq(sim_json_str(s2, "transactionId"), op->txid) || !iccid) {
        json_decref(s2);
        cancel_session(op, "invalidServerSignature");
        fail_op(op, ESIM_ECRYPTO, "the eUICC refused the SM-DP+: smdpSignature2 invalid");
        return;
    }
    json_decref(s2);
    snprintf(op->res.iccid, sizeof op->res.iccid, "%s", iccid);
    /* The one-time key of SGP.22's key agreement; the package itself is
     * signed rather than encrypted here (docs/simulator.md). */
    unsigned char otpk[65];
    otpk[0] = 0x04;
    esim_random_bytes(otpk + 1, 64);
    json_t *signed2 = json_pack("{s:s}", "transactionId", op->txid);
    sim_json_set_b64(signed2, "euiccOtpk", otpk, sizeof otpk);
    json_t *pdr = json_object();
    esim_err rc = pdr && signed2
                      ? euicc_sign_into(op, pdr, "euiccSigned2", "euiccSignature2", signed2)
                      : ESIM_ENOMEM;
    if (rc != ESIM_OK) {
        json_decref(pdr);
        fail_op(op, rc, "the eUICC could not sign");
        return;
    }
    esim_error e2;
    op->step = STEP_BPP;
    if (post(op, "getBoundProfilePackage",
             json_pack("{s:s, s:o}", "transactionId", op->txid, "prepareDownloadResponse", pdr),
             &e2) != ESIM_OK)
        fail_op(op, ESIM_EUNAVAIL, "%s", e2.msg);
}

static void after_bpp(lpa_op *op, json_t *j)
{
    json_t *bpp = verified_blob(op, j, "boundProfilePackage", "bppSignature", op->server_cert);
    if (!bpp || !str_eq(sim_json_str(bpp, "transactionId"), op->txid) ||
        !str_eq(sim_json_str(bpp, "eid"), sim_euicc_eid(op->e))) {
        json_decref(bpp);
        fail_op(op, ESIM_ECRYPTO,
                "the eUICC refused the bound profile package: bad signature or not bound to it");
        return;
    }
    sim_profile p = {0};
    p.profile_class = SIM_CLASS_OPERATIONAL;
    const char *v;
    snprintf(p.iccid, sizeof p.iccid, "%s", (v = sim_json_str(bpp, "iccid")) ? v : "");
    snprintf(p.service_provider, sizeof p.service_provider, "%s",
             (v = sim_json_str(bpp, "serviceProviderName")) ? v : "");
    snprintf(p.profile_name, sizeof p.profile_name, "%s",
             (v = sim_json_str(bpp, "profileName")) ? v : "");
    snprintf(p.nickname, sizeof p.nickname, "%s", p.service_provider);
    p.ppr = (unsigned)json_integer_value(json_object_get(bpp, "ppr")) & (SIM_PPR1 | SIM_PPR2);
    snprintf(p.smdp_address, sizeof p.smdp_address, "%s", op->smdp_address);
    json_decref(bpp);
    sim_result res;
    esim_error e2;
    /* The session's transactionId (hex from the SM-DP+) goes into the
     * install notification, a ProfileInstallationResult. */
    esim_buf tx = {0};
    if (esim_hex_decode(op->txid, &tx, NULL) == ESIM_OK && tx.len == 16)
        sim_euicc_set_session(op->e, tx.data);
    esim_buf_free(&tx);
    esim_err rc = sim_euicc_install(op->e, &p, &res, &e2);
    if (rc != ESIM_OK) {
        fail_op(op, rc, "the eUICC refused the profile: %s", e2.msg);
        return;
    }
    if (res != SIM_RES_OK) {
        report_install_failure(op, p.iccid, sim_result_name(res));
        fail_op(op, ESIM_ESTATE, "the eUICC refused the profile: %s", sim_result_name(res));
        return;
    }
    snprintf(op->res.iccid, sizeof op->res.iccid, "%s", p.iccid);
    op->res.err = ESIM_OK;
    finish(op);
}

static esim_err initiate(lpa_op *op, esim_error *err);

/* The SM-DP+ no longer knows the session (8.10.1/3.9: it restarted between
 * two steps): the download starts again once, from a new authentication. */
static bool session_lost(lpa_op *op, const json_t *j)
{
    if (op->restarted || op->step == STEP_INITIATE || !j)
        return false;
    json_t *scd = json_object_get(
        json_object_get(json_object_get(j, "header"), "functionExecutionStatus"), "statusCodeData");
    bool lost = sim_json_str(scd, "subjectCode") && sim_json_str(scd, "reasonCode") &&
                strcmp(sim_json_str(scd, "subjectCode"), "8.10.1") == 0 &&
                strcmp(sim_json_str(scd, "reasonCode"), "3.9") == 0;
    if (!lost)
        return false;
    op->restarted = true;
    X509_free(op->server_cert);
    op->server_cert = NULL;
    op->txid[0] = '\0';
    op->step = STEP_INITIATE;
    if (esim_random_bytes(op->euicc_challenge, 16) != ESIM_OK || initiate(op, NULL) != ESIM_OK)
        return false;
    return true;
}

static void on_answer(lpa_op *op, sim_http_response *r)
{
    /* The body is parsed once, for both looks at it. */
    json_t *j = r->err == ESIM_OK && r->status == 200
                    ? sim_json_loadb((const char *)r->body.data, r->body.len)
                    : NULL;
    if (session_lost(op, j)) {
        json_decref(j);
        return;
    }
    j = parse_answer(op, r, j);
    if (!j)
        return;
    switch (op->step) {
    case STEP_INITIATE:
        after_initiate(op, j);
        break;
    case STEP_AUTHENTICATE:
        after_authenticate(op, j);
        break;
    case STEP_BPP:
        after_bpp(op, j);
        break;
    }
    json_decref(j);
}

static void on_response(void *arg, sim_http_response *r)
{
    lpa_op *op = arg;
    sim_lpa_link *l = op->link; /* the request's reference: |op| may end here */
    on_answer(op, r);
    link_unref(l);
}

static esim_err initiate(lpa_op *op, esim_error *err)
{
    json_t *body = json_pack("{s:s, s:{s:s, s:[s]}}", "smdpAddress", op->smdp_address, "euiccInfo1",
                             "svn", "2.2.0", "euiccCiPKIdListForVerification", "test-ci");
    sim_json_set_b64(body, "euiccChallenge", op->euicc_challenge, 16);
    return post(op, "initiateAuthentication", body, err);
}

static void initiate_after_notifications(void *arg, size_t still_pending)
{
    (void)still_pending;
    lpa_op *op = arg;
    esim_error e = {{0}};
    if (initiate(op, &e) == ESIM_OK)
        return;
    op->res.err = ESIM_EUNAVAIL;
    snprintf(op->res.message, sizeof op->res.message, "%.250s", e.msg);
    finish(op);
}

esim_err sim_lpa_download(sim_http *h, sim_euicc *e, sim_lpa_link **link, const char *server_url,
                          const char *ca_file, const char *matching_id, sim_download_cb cb,
                          void *arg, esim_error *err)
{
    if (!h || !e || !cb)
        return esim_fail(err, ESIM_EINVAL, "a download needs a client, an eUICC and a callback");
    lpa_op *op = calloc(1, sizeof *op);
    if (!op)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_err rc = split_url(server_url, op->base, sizeof op->base, op->smdp_address,
                            sizeof op->smdp_address, err);
    if (rc == ESIM_OK && matching_id)
        rc = sim_copy(op->matching_id, sizeof op->matching_id, matching_id, "matching ID", err);
    if (rc == ESIM_OK && ca_file)
        rc = sim_copy(op->ca_file, sizeof op->ca_file, ca_file, "CA file path", err);
    if (rc == ESIM_OK && esim_random_bytes(op->euicc_challenge, 16) != ESIM_OK)
        rc = esim_fail(err, ESIM_ECRYPTO, "no random bytes for the eUICC challenge");
    if (rc == ESIM_OK && !(op->link = link_begin(link)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (rc != ESIM_OK) {
        free(op);
        return rc;
    }
    op->h = h;
    op->e = e;
    op->cb = cb;
    op->arg = arg;
    op->step = STEP_INITIATE;
    op->res.err = ESIM_EUNAVAIL;
    /* The eUICC's pending notifications go first (an install made just
     * before the phone was switched off, not reported yet): the SM-DP+ then
     * knows what the eUICC holds before it is asked for a package again
     * (its download retry serves only an eUICC that reported nothing). */
    if (sim_euicc_notification_count(e) > 0 &&
        sim_lpa_send_notifications(h, e, &op->link, ca_file, initiate_after_notifications, op,
                                   NULL) == ESIM_OK)
        return ESIM_OK;
    rc = initiate(op, err);
    if (rc != ESIM_OK) {
        link_end(op->link, false);
        free(op);
    }
    return rc;
}

/* ---- notifications ------------------------------------------------------------ */

typedef struct {
    sim_http *h;
    sim_euicc *e;
    sim_lpa_link *link; /* the device's (a call's reference) */
    char ca_file[SIM_PATH_MAX];
    uint32_t *seqs; /* the notifications to send, in order */
    size_t n, next;
    sim_notify_cb cb;
    void *arg;
} notify_op;

static void notify_next(notify_op *op);

static void notify_done(notify_op *op)
{
    size_t still = 0;
    for (size_t i = 0; i < op->n; i++)
        for (size_t k = 0; k < sim_euicc_notification_count(op->e); k++)
            if (sim_euicc_notification_at(op->e, k)->seq == op->seqs[i])
                still++;
    sim_notify_cb cb = op->cb;
    void *arg = op->arg;
    link_end(op->link, false);
    free(op->seqs);
    free(op);
    if (cb)
        cb(arg, still);
}

static void on_notify_response(void *arg, sim_http_response *r)
{
    notify_op *op = arg;
    sim_lpa_link *l = op->link; /* the request's reference: |op| may end here */
    /* The SM-DP+ confirms with 204 (or 200 without a failure): only then
     * may the eUICC forget the notification. */
    if (r->err == ESIM_OK && (r->status == 204 || r->status == 200)) {
        bool failed = false;
        if (r->status == 200 && r->body.len) {
            json_t *j = sim_json_loadb((const char *)r->body.data, r->body.len);
            const char *st = sim_json_str(
                json_object_get(json_object_get(j, "header"), "functionExecutionStatus"), "status");
            failed = st && strcmp(st, "Executed-Success") != 0;
            json_decref(j);
        }
        if (!failed)
            sim_euicc_notification_remove(op->e, op->seqs[op->next - 1]);
    }
    notify_next(op);
    link_unref(l);
}

static void notify_next(notify_op *op)
{
    while (op->next < op->n) {
        uint32_t seq = op->seqs[op->next++];
        const sim_notification *n = NULL;
        for (size_t k = 0; k < sim_euicc_notification_count(op->e); k++)
            if (sim_euicc_notification_at(op->e, k)->seq == seq)
                n = sim_euicc_notification_at(op->e, k);
        if (!n || !n->smdp_address[0])
            continue;
        json_t *pn = json_pack("{s:I, s:s, s:s, s:s, s:s}", "seqNumber", (json_int_t)n->seq,
                               "event", sim_notif_event_name(n->event), "iccid", n->iccid,
                               "notificationAddress", n->smdp_address, "result", "ok");
        json_t *body = json_object();
        esim_buf ecert = {0}, eum = {0}, raw = {0};
        unsigned char sig[64];
        char url[300];
        snprintf(url, sizeof url, "https://%s" ES9_PATH "handleNotification", n->smdp_address);
        bool ok =
            pn && body && sim_json_dump(pn, &raw) == ESIM_OK &&
            sim_euicc_sign(op->e, raw.data, raw.len, sig, NULL) == ESIM_OK &&
            sim_euicc_cert_b64(op->e, &ecert, &eum) == ESIM_OK &&
            sim_json_set_b64(body, "pendingNotification", raw.data, raw.len) == ESIM_OK &&
            sim_json_set_b64(body, "euiccNotificationSignature", sig, 64) == ESIM_OK &&
            json_object_set_new(body, "euiccCertificate", json_string((const char *)ecert.data)) ==
                0 &&
            json_object_set_new(body, "eumCertificate", json_string((const char *)eum.data)) == 0;
        esim_buf b = {0};
        if (ok)
            ok = sim_json_dump(body, &b) == ESIM_OK;
        json_decref(pn);
        json_decref(body);
        esim_buf_free(&ecert);
        esim_buf_free(&eum);
        esim_buf_free(&raw);
        if (!ok) {
            esim_buf_free(&b);
            continue;
        }
        static const char *const hdrs[] = {"Content-Type: application/json",
                                           "X-Admin-Protocol: gsma/rsp/v2.2.0"};
        sim_http_request req = {.method = "POST",
                                .url = url,
                                .headers = hdrs,
                                .n_headers = 2,
                                .body = b.data,
                                .body_len = b.len,
                                .ca_file = op->ca_file[0] ? op->ca_file : NULL,
                                .timeout_ms = 15000};
        esim_err rc = link_send(op->link, op->h, &req, on_notify_response, op, NULL);
        esim_buf_free(&b);
        if (rc == ESIM_OK)
            return;
    }
    notify_done(op);
}

esim_err sim_lpa_send_notifications(sim_http *h, sim_euicc *e, sim_lpa_link **link,
                                    const char *ca_file, sim_notify_cb cb, void *arg,
                                    esim_error *err)
{
    if (!h || !e)
        return esim_fail(err, ESIM_EINVAL, "notifications need a client and an eUICC");
    notify_op *op = calloc(1, sizeof *op);
    size_t n = sim_euicc_notification_count(e);
    if (!op || (n && !(op->seqs = calloc(n, sizeof *op->seqs)))) {
        free(op);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    if (ca_file && sim_copy(op->ca_file, sizeof op->ca_file, ca_file, "CA file", err) != ESIM_OK) {
        free(op->seqs);
        free(op);
        return ESIM_EINVAL;
    }
    if (!(op->link = link_begin(link))) {
        free(op->seqs);
        free(op);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        op->seqs[i] = sim_euicc_notification_at(e, i)->seq;
    op->n = n;
    op->h = h;
    op->e = e;
    op->cb = cb;
    op->arg = arg;
    /* Sent one at a time, in sequence order, as the LPA does. */
    notify_next(op);
    return ESIM_OK;
}
