/*
 * eim_relay.c — the indirect profile download (SGP.32 3.2.3): an IPA that
 * cannot reach the SM-DP+ sends SGP.22's mutual authentication to the eIM
 * in ESipa DER (BF39 InitiateAuthentication, BF3B AuthenticateClient, BF3A
 * GetBoundProfilePackage, BF41 CancelSession, BF3D HandleNotification); the
 * eIM relays each to the SM-DP+ over ES9+ (HTTPS, SGP.22's JSON with base64
 * DER fields) with libcurl on the service's loop, and turns the SM-DP+'s
 * answer back into the ESipa answer. The eIM looks inside nothing it does
 * not need: the signed structures pass through byte for byte (the eUICC
 * and the SM-DP+ verify them); it checks that each answer is well-formed DER
 * of the right type. An SM-DP+ that cannot be reached, times out or refuses
 * becomes the ESipa error of that step, and the reason is logged and kept
 * for the download's result (eim_relay_failure).
 *
 * ESipa has no client authentication, so the relay connects only where the
 * eIM sent the device: the SM-DP+ of a download trigger it signed and
 * delivered and still awaits (and, from authenticateClient on, one for the
 * eUICC whose certificate comes); anything else is refused before any
 * connection. The allowlist and the sessions (transactionId -> SM-DP+) are
 * store look-ups, so every instance on one database sees the same.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "service/curl_loop.h"
#include "service/eim.h"
#include "service/service_internal.h"
#include "sgp32/sgp32.h"

#define RELAY_TIMEOUT_MS 20000
#define RELAY_MAX_CALLS 1024             /* relayed requests in flight at once */
#define RELAY_SESSION_TTL_MS (5 * 60000) /* an SGP.22 session is a few round trips */
#define RELAY_MAX_ANSWER (2 * SGP32_DER_MAX)
#define RELAY_FAILURES 64           /* the last failure per SM-DP+, for the results */
#define RELAY_FAILURE_TTL_MS 600000 /* how long it explains a failed download */
#define ES9_PATH "/gsma/rsp2/es9plus/"

static const char *const fn_name[] = {"initiateAuthentication", "authenticateClient",
                                      "getBoundProfilePackage", "cancelSession",
                                      "handleNotification"};

typedef struct relay_call {
    struct relay_call *next;
    esim_service *svc;
    struct evhttp_request *req;
    eim_es9_fn fn;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    esim_buf answer;
    bool too_big;
    char smdp[256];
    uint8_t txid[16];
    size_t txid_len;
    char eid[ESIM_EID_LEN + 1]; /* "" before authenticateClient */
    int64_t session_ms;         /* when its session began (the later steps) */
    char why[300];              /* why it is not relayed */
} relay_call;

/* A failure is the eUICC's (by EID) from authenticateClient on; before,
 * only the SM-DP+ is known, and the failure (unreachable, refusing to
 * start a session) is that SM-DP+'s for every eUICC. */
typedef struct {
    char smdp[256];
    char eid[ESIM_EID_LEN + 1];
    char why[300];
    int64_t at_ms;
} relay_failure;

struct eim_relay_state {
    curl_loop loop;
    relay_call *calls;
    size_t n_calls;
    relay_failure failures[RELAY_FAILURES];
    size_t next_failure;
};

/* ---- the SM-DP+'s ES9+ answer as the ESipa answer (no I/O: fuzzed) ------------------------- */

static void say(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || !why_len)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

/* Base64 string at |key| decoded into |out| (at most SGP32_DER_MAX bytes). */
static bool b64_field(const json_t *j, const char *key, esim_buf *out)
{
    const char *s = json_string_value(json_object_get(j, key));
    size_t n = s ? strlen(s) : 0;
    return s && n > 0 && n <= (size_t)SGP32_DER_MAX / 3 * 4 + 4 &&
           esim_base64_decode(s, n, out, NULL) == ESIM_OK && out->len > 0;
}

/* The DER at |key| decoded as |td| into *obj; with |tag| not 0, the DER
 * carries |tag| where |td| (an untagged SEQUENCE OF, re-tagged where ESipa
 * uses it) has the SEQUENCE tag. */
static bool der_field(const json_t *j, const char *key, uint16_t tag,
                      const asn_TYPE_descriptor_t *td, void **obj)
{
    esim_buf raw = {0}, seq = {0};
    const uint8_t *v;
    size_t n;
    bool ok = b64_field(j, key, &raw);
    if (ok && tag)
        ok = sgp32_tlv_unwrap(tag, raw.data, raw.len, &v, &n, NULL) == ESIM_OK &&
             sgp32_tlv_wrap(0x30, v, n, &seq) == ESIM_OK;
    if (ok)
        ok = sgp32_decode(td, tag ? seq.data : raw.data, tag ? seq.len : raw.len, obj, NULL) ==
             ESIM_OK;
    esim_buf_free(&raw);
    esim_buf_free(&seq);
    return ok;
}

/* The contents of the |tag| TLV (base64 at |key|) into |o|. */
static bool tlv_field(const json_t *j, const char *key, uint16_t tag, OCTET_STRING_t *o)
{
    esim_buf raw = {0};
    const uint8_t *v;
    size_t n;
    bool ok = b64_field(j, key, &raw) &&
              sgp32_tlv_unwrap(tag, raw.data, raw.len, &v, &n, NULL) == ESIM_OK &&
              OCTET_STRING_fromBuf(o, (const char *)v, (int)n) == 0;
    esim_buf_free(&raw);
    return ok;
}

/* ES9+ transactionId: 2 to 32 hex digits. */
static bool txid_field(const json_t *j, uint8_t out[16], size_t *len)
{
    const char *s = json_string_value(json_object_get(j, "transactionId"));
    size_t n = s ? strlen(s) : 0;
    if (n < 2 || n > 32 || n % 2)
        return false;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (!strchr("0123456789abcdefABCDEF", s[2 * i]) || !s[2 * i] ||
            !strchr("0123456789abcdefABCDEF", s[2 * i + 1]) || !s[2 * i + 1] ||
            sscanf(s + 2 * i, "%2x", &v) != 1)
            return false;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return true;
}

static TransactionId_t *txid_new(const uint8_t *t, size_t n)
{
    return OCTET_STRING_new_fromBuf(&asn_DEF_TransactionId, (const char *)t, (int)n);
}

/* SGP.22 subject/reason codes -> the ESipa error code of |fn|. */
static long esipa_code(eim_es9_fn fn, const char *subject, const char *reason)
{
    bool s_auth = strcmp(subject, "8.1") == 0, sig = strcmp(reason, "6.1") == 0;
    bool unknown_tx = strcmp(subject, "8.10.1") == 0;
    switch (fn) {
    case EIM_ES9_INITIATE:
        if (strcmp(subject, "8.8.1") == 0 || strcmp(subject, "8.8") == 0)
            return 1; /* invalidDpAddress */
        if (strcmp(subject, "8.8.3") == 0)
            return 2; /* euiccVersionNotSupportedByDp */
        if (strcmp(subject, "8.8.2") == 0)
            return 3; /* ciPKIdNotSupported */
        return 127;
    case EIM_ES9_AUTHENTICATE:
        if (strcmp(subject, "8.1.2") == 0)
            return 1; /* eumCertificateInvalid */
        if (strcmp(subject, "8.1.3") == 0)
            return 3; /* euiccCertificateInvalid */
        if (s_auth && sig)
            return 5; /* euiccSignatureInvalid */
        if (strcmp(subject, "8.2.6") == 0)
            return 6; /* matchingIdRefused */
        if (strcmp(subject, "8.1.1") == 0 && strcmp(reason, "3.8") == 0)
            return 7; /* eidMismatch */
        if (strcmp(subject, "8.1.1") == 0 || strcmp(subject, "8.2") == 0)
            return 8; /* noEligibleProfile */
        if (unknown_tx)
            return 10; /* invalidTransactionId */
        return 127;
    case EIM_ES9_BPP:
        if (s_auth && sig)
            return 1; /* euiccSignatureInvalid */
        if (strcmp(subject, "8.2") == 0 && strcmp(reason, "3.7") == 0)
            return 5; /* bppRebindingRefused */
        if (unknown_tx)
            return 95; /* invalidTransactionId */
        return 127;
    case EIM_ES9_CANCEL:
        if (unknown_tx)
            return 1; /* invalidTransactionId */
        if (sig)
            return 2; /* euiccSignatureInvalid */
        return 127;
    default:
        return 127;
    }
}

static esim_err encode_msg(EsipaMessageFromEimToIpa_t *m, esim_buf *der)
{
    esim_err rc = sgp32_encode(&asn_DEF_EsipaMessageFromEimToIpa, m, der, NULL);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromEimToIpa, m);
    return rc;
}

/* The error answer of |fn| with |code|. */
static esim_err error_answer(eim_es9_fn fn, long code, esim_buf *der)
{
    EsipaMessageFromEimToIpa_t m = {0};
    switch (fn) {
    case EIM_ES9_INITIATE:
        m.present = EsipaMessageFromEimToIpa_PR_initiateAuthenticationResponseEsipa;
        m.choice.initiateAuthenticationResponseEsipa.present =
            InitiateAuthenticationResponseEsipa_PR_initiateAuthenticationErrorEsipa;
        m.choice.initiateAuthenticationResponseEsipa.choice.initiateAuthenticationErrorEsipa = code;
        break;
    case EIM_ES9_AUTHENTICATE:
        m.present = EsipaMessageFromEimToIpa_PR_authenticateClientResponseEsipa;
        m.choice.authenticateClientResponseEsipa.present =
            AuthenticateClientResponseEsipa_PR_authenticateClientErrorEsipa;
        m.choice.authenticateClientResponseEsipa.choice.authenticateClientErrorEsipa = code;
        break;
    case EIM_ES9_BPP:
        m.present = EsipaMessageFromEimToIpa_PR_getBoundProfilePackageResponseEsipa;
        m.choice.getBoundProfilePackageResponseEsipa.present =
            GetBoundProfilePackageResponseEsipa_PR_getBoundProfilePackageErrorEsipa;
        m.choice.getBoundProfilePackageResponseEsipa.choice.getBoundProfilePackageErrorEsipa = code;
        break;
    case EIM_ES9_CANCEL:
        m.present = EsipaMessageFromEimToIpa_PR_cancelSessionResponseEsipa;
        m.choice.cancelSessionResponseEsipa.present =
            CancelSessionResponseEsipa_PR_cancelSessionError;
        m.choice.cancelSessionResponseEsipa.choice.cancelSessionError = code;
        break;
    default:
        return ESIM_OK; /* handleNotification has no ESipa answer */
    }
    return encode_msg(&m, der);
}

static bool ok_answer(eim_es9_fn fn, const json_t *j, esim_buf *der, uint8_t txid[16],
                      size_t *txid_len)
{
    EsipaMessageFromEimToIpa_t m = {0};
    bool ok = txid_field(j, txid, txid_len);
    switch (fn) {
    case EIM_ES9_INITIATE: {
        m.present = EsipaMessageFromEimToIpa_PR_initiateAuthenticationResponseEsipa;
        m.choice.initiateAuthenticationResponseEsipa.present =
            InitiateAuthenticationResponseEsipa_PR_initiateAuthenticationOkEsipa;
        InitiateAuthenticationOkEsipa_t *a =
            &m.choice.initiateAuthenticationResponseEsipa.choice.initiateAuthenticationOkEsipa;
        void *s1 = NULL, *cert = NULL;
        ok = ok && (a->transactionId = txid_new(txid, *txid_len)) &&
             der_field(j, "serverSigned1", 0, &asn_DEF_ServerSigned1, &s1) &&
             der_field(j, "serverCertificate", 0, &asn_DEF_Certificate, &cert) &&
             tlv_field(j, "serverSignature1", 0x5F37, &a->serverSignature1) &&
             tlv_field(j, "euiccCiPKIdToBeUsed", 0x04, &a->euiccCiPKIdToBeUsed);
        if (s1) {
            a->serverSigned1 = *(ServerSigned1_t *)s1;
            free(s1);
        }
        if (cert) {
            a->serverCertificate = *(Certificate_t *)cert;
            free(cert);
        }
        /* The transaction the SM-DP+ signed is the one it names. */
        ok = ok && a->serverSigned1.transactionId.size == (int)*txid_len &&
             memcmp(a->serverSigned1.transactionId.buf, txid, *txid_len) == 0;
        break;
    }
    case EIM_ES9_AUTHENTICATE: {
        m.present = EsipaMessageFromEimToIpa_PR_authenticateClientResponseEsipa;
        m.choice.authenticateClientResponseEsipa.present =
            AuthenticateClientResponseEsipa_PR_authenticateClientOkDPEsipa;
        AuthenticateClientOkDPEsipa_t *a =
            &m.choice.authenticateClientResponseEsipa.choice.authenticateClientOkDPEsipa;
        void *md = NULL, *s2 = NULL, *cert = NULL;
        ok = ok && (a->transactionId = txid_new(txid, *txid_len)) &&
             der_field(j, "profileMetadata", 0xBF25, &asn_DEF_StoreMetadataRequest, &md) &&
             der_field(j, "smdpSigned2", 0, &asn_DEF_SmdpSigned2, &s2) &&
             der_field(j, "smdpCertificate", 0, &asn_DEF_Certificate, &cert) &&
             tlv_field(j, "smdpSignature2", 0x5F37, &a->smdpSignature2);
        a->profileMetaData = md;
        if (s2) {
            a->smdpSigned2 = *(SmdpSigned2_t *)s2;
            free(s2);
        }
        if (cert) {
            a->smdpCertificate = *(Certificate_t *)cert;
            free(cert);
        }
        break;
    }
    case EIM_ES9_BPP: {
        m.present = EsipaMessageFromEimToIpa_PR_getBoundProfilePackageResponseEsipa;
        m.choice.getBoundProfilePackageResponseEsipa.present =
            GetBoundProfilePackageResponseEsipa_PR_getBoundProfilePackageOkEsipa;
        GetBoundProfilePackageOkEsipa_t *a =
            &m.choice.getBoundProfilePackageResponseEsipa.choice.getBoundProfilePackageOkEsipa;
        void *bpp = NULL;
        ok = ok && (a->transactionId = txid_new(txid, *txid_len)) &&
             der_field(j, "boundProfilePackage", 0xBF36, &asn_DEF_BoundProfilePackage, &bpp);
        if (bpp) {
            a->boundProfilePackage = *(BoundProfilePackage_t *)bpp;
            free(bpp);
        }
        break;
    }
    case EIM_ES9_CANCEL:
        ok = true; /* SGP.22: a header only */
        m.present = EsipaMessageFromEimToIpa_PR_cancelSessionResponseEsipa;
        m.choice.cancelSessionResponseEsipa.present = CancelSessionResponseEsipa_PR_cancelSessionOk;
        break;
    default:
        return true;
    }
    if (!ok) {
        ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_EsipaMessageFromEimToIpa, &m);
        return false;
    }
    return encode_msg(&m, der) == ESIM_OK;
}

esim_err eim_es9_to_esipa(eim_es9_fn fn, long status, const uint8_t *body, size_t len,
                          esim_buf *der, uint8_t txid[16], size_t *txid_len, char *why,
                          size_t why_len)
{
    *txid_len = 0;
    if (why && why_len)
        why[0] = '\0';
    if ((unsigned)fn > EIM_ES9_NOTIFY)
        return ESIM_EINVAL;
    if (fn == EIM_ES9_NOTIFY && (status == 204 || status == 200) && len == 0)
        return ESIM_OK;
    json_t *j = NULL, *st = NULL;
    const char *status_s = NULL;
    if (status == 200 && len > 0 && len <= RELAY_MAX_ANSWER) {
        j = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, NULL);
        st = json_object_get(json_object_get(j, "header"), "functionExecutionStatus");
        status_s = json_string_value(json_object_get(st, "status"));
    }
    long code = 127;
    esim_err rc = ESIM_OK;
    if (status != 200) {
        say(why, why_len, "the SM-DP+ answered %s with HTTP %ld", fn_name[fn], status);
    } else if (!json_is_object(j) || !status_s) {
        say(why, why_len, "the SM-DP+'s %s answer is not an ES9+ JSON response", fn_name[fn]);
    } else if (strcmp(status_s, "Executed-Success") != 0 &&
               strcmp(status_s, "Executed-WithWarning") != 0) {
        json_t *scd = json_object_get(st, "statusCodeData");
        const char *subject = json_string_value(json_object_get(scd, "subjectCode"));
        const char *reason = json_string_value(json_object_get(scd, "reasonCode"));
        const char *msg = json_string_value(json_object_get(scd, "message"));
        code = esipa_code(fn, subject ? subject : "", reason ? reason : "");
        say(why, why_len, "the SM-DP+ refused %s: %.16s/%.16s %.120s", fn_name[fn],
            subject ? subject : "?", reason ? reason : "?", msg ? msg : "");
    } else if (fn == EIM_ES9_NOTIFY) {
        json_decref(j);
        return ESIM_OK;
    } else if (ok_answer(fn, j, der, txid, txid_len)) {
        json_decref(j);
        return ESIM_OK;
    } else {
        *txid_len = 0;
        say(why, why_len,
            "the SM-DP+'s %s answer lacks a field or carries one that is not the "
            "DER SGP.22 gives",
            fn_name[fn]);
    }
    json_decref(j);
    esim_buf_reset(der);
    if (error_answer(fn, code, der) != ESIM_OK)
        rc = ESIM_ENOMEM;
    return rc == ESIM_OK ? ESIM_EPROTO : rc;
}

/* ---- the ESipa request as the ES9+ request --------------------------------------------- */

static bool set_b64(json_t *j, const char *key, const uint8_t *p, size_t n)
{
    esim_buf b = {0};
    bool ok = esim_base64_encode(p, n, &b) == ESIM_OK &&
              json_object_set_new(j, key, json_string((const char *)b.data)) == 0;
    esim_buf_free(&b);
    return ok;
}

static bool set_der(json_t *j, const char *key, const asn_TYPE_descriptor_t *td, const void *obj)
{
    esim_buf b = {0};
    bool ok = sgp32_encode(td, obj, &b, NULL) == ESIM_OK && set_b64(j, key, b.data, b.len);
    esim_buf_free(&b);
    return ok;
}

/* An ES10b answer ESipa carries as its CHOICE alternative, with the
 * CHOICE's own |tag| put back around it (SGP.22's form). */
static bool set_wrapped(json_t *j, const char *key, uint16_t tag, const OpaqueTlv_t *any)
{
    esim_buf b = {0};
    bool ok =
        sgp32_tlv_wrap(tag, any->buf, any->size, &b) == ESIM_OK && set_b64(j, key, b.data, b.len);
    esim_buf_free(&b);
    return ok;
}

static bool set_txid(json_t *j, const TransactionId_t *t)
{
    char hex[33];
    if (!t || t->size < 1 || t->size > 16)
        return false;
    for (int i = 0; i < t->size; i++)
        snprintf(hex + 2 * i, 3, "%02X", t->buf[i]);
    return json_object_set_new(j, "transactionId", json_string(hex)) == 0;
}

bool eim_smdp_key(const char *p, size_t n, char out[EIM_SMDP_KEY_LEN])
{
    const char *colon = p ? memchr(p, ':', n) : NULL;
    size_t host_len = colon ? (size_t)(colon - p) : n;
    if (!p || host_len == 0 || host_len > 253 || p[0] == '.' || p[0] == '-')
        return false;
    for (size_t i = 0; i < host_len; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
              (p[i] >= '0' && p[i] <= '9') || p[i] == '.' || p[i] == '-'))
            return false;
    long port = 443;
    if (colon) {
        size_t digits = n - host_len - 1;
        if (digits < 1 || digits > 5)
            return false;
        port = 0;
        for (size_t i = host_len + 1; i < n; i++) {
            if (p[i] < '0' || p[i] > '9')
                return false;
            port = port * 10 + (p[i] - '0');
        }
        if (port < 1 || port > 65535)
            return false;
    }
    for (size_t i = 0; i < host_len; i++)
        out[i] = (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] - 'A' + 'a' : p[i]);
    snprintf(out + host_len, EIM_SMDP_KEY_LEN - host_len, ":%ld", port);
    return true;
}

static void txid_hex(const uint8_t *t, size_t n, char hex[33])
{
    hex[0] = '\0';
    for (size_t i = 0; i < n && i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02X", t[i]);
}

/* ---- sessions and failures ------------------------------------------------------------- */

/* The sessions (transactionId -> SM-DP+) are in the store, so a later step
 * that reaches another instance on the same store goes on where the first
 * began. A store failure loses a session: the IPA's later step gets
 * invalidTransactionId, the SM-DP+ times its session out. */
static void session_put(esim_service *svc, const uint8_t *txid, size_t txid_len, const char *smdp,
                        const char *eid, int64_t created_ms)
{
    store_relay_session rs = {.created_ms = created_ms};
    txid_hex(txid, txid_len, rs.txid);
    snprintf(rs.smdp, sizeof rs.smdp, "%s", smdp);
    snprintf(rs.eid, sizeof rs.eid, "%s", eid);
    esim_error err = {{0}};
    if (esim_store_relay_session_put(svc->st, &rs, esim_now_ms() - RELAY_SESSION_TTL_MS, &err) !=
        ESIM_OK) {
        svc->m.store_errors++;
        svc_log(svc, ESIM_LOG_WARN, "eim_relay_failed", "smdp", smdp, "reason", err.msg, NULL);
    }
}

static void session_drop(esim_service *svc, const uint8_t *txid, size_t txid_len)
{
    char hex[33];
    txid_hex(txid, txid_len, hex);
    if (esim_store_relay_session_drop(svc->st, hex, NULL) != ESIM_OK)
        svc->m.store_errors++; /* it expires */
}

static void note_failure(eim_relay_state *r, const char *smdp, const char *eid, const char *why)
{
    relay_failure *f = NULL;
    for (size_t i = 0; i < RELAY_FAILURES && !f; i++)
        if (strcmp(r->failures[i].smdp, smdp) == 0 && strcmp(r->failures[i].eid, eid) == 0)
            f = &r->failures[i];
    if (!f)
        f = &r->failures[r->next_failure++ % RELAY_FAILURES];
    snprintf(f->smdp, sizeof f->smdp, "%s", smdp);
    snprintf(f->eid, sizeof f->eid, "%s", eid);
    snprintf(f->why, sizeof f->why, "%.299s", why);
    f->at_ms = esim_mono_ms();
}

const char *eim_relay_failure(const svc_eim *e, const char *smdp, const char *eid)
{
    const eim_relay_state *r = e ? e->relay : NULL;
    int64_t now = esim_mono_ms();
    const char *found = NULL;
    int64_t at = 0;
    for (size_t i = 0; r && smdp && eid && i < RELAY_FAILURES; i++) {
        const relay_failure *f = &r->failures[i];
        if (f->smdp[0] && strcmp(f->smdp, smdp) == 0 && now - f->at_ms < RELAY_FAILURE_TTL_MS &&
            (!f->eid[0] || strcmp(f->eid, eid) == 0) && (!found || f->at_ms > at)) {
            found = f->why;
            at = f->at_ms;
        }
    }
    return found;
}

/* The EID in the eUICC certificate of an AuthenticateServerResponse (the
 * ES10b answer the IPA relays), for the failures; "" when there is none. */
static void eid_of_auth(const OpaqueTlv_t *any, char eid[ESIM_EID_LEN + 1])
{
    esim_buf wrapped = {0}, cert = {0};
    AuthenticateServerResponse_t *a = NULL;
    eid[0] = '\0';
    if (sgp32_tlv_wrap(0xBF38, any->buf, (size_t)any->size, &wrapped) == ESIM_OK &&
        sgp32_decode(&asn_DEF_AuthenticateServerResponse, wrapped.data, wrapped.len, (void **)&a,
                     NULL) == ESIM_OK &&
        a->present == AuthenticateServerResponse_PR_authenticateResponseOk &&
        sgp32_encode(&asn_DEF_Certificate, &a->choice.authenticateResponseOk.euiccCertificate,
                     &cert, NULL) == ESIM_OK) {
        const unsigned char *p = cert.data;
        X509 *x = d2i_X509(NULL, &p, (long)cert.len);
        char serial[64] = "";
        if (x && esim_cert_subject_field(x, NID_serialNumber, serial, sizeof serial) == ESIM_OK &&
            esim_eid_validate(serial, NULL) == ESIM_OK)
            snprintf(eid, ESIM_EID_LEN + 1, "%.32s", serial);
        X509_free(x);
    }
    sgp32_free(&asn_DEF_AuthenticateServerResponse, a);
    esim_buf_free(&wrapped);
    esim_buf_free(&cert);
}

/* ---- the calls -------------------------------------------------------------------------- */

static size_t keep(char *p, size_t size, size_t n, void *arg)
{
    relay_call *c = arg;
    size_t len = size * n;
    if (c->answer.len + len > RELAY_MAX_ANSWER) {
        c->too_big = true;
        return 0;
    }
    return esim_buf_append(&c->answer, p, len) == ESIM_OK ? len : 0;
}

static void call_free(relay_call *c)
{
    if (c->easy)
        curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    free(c->body);
    esim_buf_free(&c->answer);
    free(c);
}

static void call_done(eim_relay_state *r, relay_call *c, CURLcode res, long code)
{
    esim_service *svc = c->svc;
    esim_buf der = {0};
    uint8_t txid[16];
    size_t txid_len = 0;
    char why[300] = "";
    esim_err rc;
    if (res != CURLE_OK) {
        snprintf(why, sizeof why, "the SM-DP+ %.120s could not be reached for %s: %.100s", c->smdp,
                 fn_name[c->fn], c->too_big ? "its answer is too large" : curl_easy_strerror(res));
        rc = error_answer(c->fn, 127, &der) == ESIM_OK ? ESIM_EUNAVAIL : ESIM_ENOMEM;
    } else {
        rc = eim_es9_to_esipa(c->fn, code, c->answer.data, c->answer.len, &der, txid, &txid_len,
                              why, sizeof why);
    }
    if (rc == ESIM_OK) {
        svc->eim->m.relayed[0]++;
        if (c->fn == EIM_ES9_INITIATE && txid_len)
            session_put(svc, txid, txid_len, c->smdp, "", esim_now_ms());
        if (c->fn == EIM_ES9_BPP || c->fn == EIM_ES9_CANCEL)
            session_drop(svc, c->txid, c->txid_len); /* the SM-DP+ ended it */
        /* A package came: an earlier failure explains nothing any more. */
        for (size_t i = 0; c->fn == EIM_ES9_BPP && c->eid[0] && i < RELAY_FAILURES; i++)
            if (strcmp(r->failures[i].eid, c->eid) == 0)
                memset(&r->failures[i], 0, sizeof r->failures[i]);
    } else {
        svc->eim->m.relayed[1]++;
        note_failure(r, c->smdp, c->eid, why);
        svc_log(svc, ESIM_LOG_WARN, "eim_relay_failed", "smdp", c->smdp, "function", fn_name[c->fn],
                "reason", why, NULL);
        if (c->fn != EIM_ES9_INITIATE && c->fn != EIM_ES9_NOTIFY)
            session_drop(svc, c->txid, c->txid_len);
    }
    if (c->fn == EIM_ES9_NOTIFY) {
        /* No ESipa answer: 204 once the SM-DP+ has it, else the IPA keeps
         * the notification for a later attempt. */
        if (rc == ESIM_OK)
            eim_reply(svc, c->req, 204, "", 0, NULL);
        else
            eim_reply(svc, c->req, 502, NULL, 0, why);
    } else if (der.len) {
        eim_reply(svc, c->req, 200, der.data, der.len, NULL);
    } else {
        eim_reply(svc, c->req, 500, NULL, 0, "out of memory");
    }
    esim_buf_free(&der);
}

static void on_finished(void *arg)
{
    eim_relay_state *r = arg;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(r->loop.multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        relay_call *c = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        long code = 0;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
        CURLcode res = msg->data.result;
        curl_multi_remove_handle(r->loop.multi, c->easy);
        for (relay_call **pp = &r->calls; *pp; pp = &(*pp)->next)
            if (*pp == c) {
                *pp = c->next;
                r->n_calls--;
                break;
            }
        call_done(r, c, res, code);
        call_free(c);
    }
}

static eim_relay_state *relay_state(esim_service *svc)
{
    svc_eim *e = svc->eim;
    if (e->relay)
        return e->relay;
    eim_relay_state *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (curl_loop_init(&r->loop, svc->base, on_finished, r) != 0 ||
        (!svc->eim_smdp_ca_path && !curl_loop_system_store(&svc->system_store))) {
        curl_loop_free(&r->loop);
        free(r);
        return NULL;
    }
    e->relay = r;
    return r;
}

enum { REFUSED_ADDRESS, REFUSED_EID, REFUSED_NOTIFICATION };
static const char *const refused_name[] = {"smdp_address", "eid", "notification_address"};

/* Whether a download trigger the eIM signed and delivered names the SM-DP+
 * |addr| (for |eid|, "" any; with |pending|, one whose result has not come).
 * A store failure is a no with *store_failed. */
static bool trigger_named(relay_call *c, const char *addr, const char *eid, bool pending,
                          bool *store_failed)
{
    char key[EIM_SMDP_KEY_LEN];
    bool found = false;
    esim_error err = {{0}};
    *store_failed = false;
    if (!eim_smdp_key(addr, strlen(addr), key))
        return false;
    if (esim_store_iot_trigger_find(c->svc->st, key, eid, pending, &found, &err) != ESIM_OK) {
        c->svc->m.store_errors++;
        *store_failed = true;
        snprintf(c->why, sizeof c->why, "the eIM's store failed: %.200s", err.msg);
        return false;
    }
    return found;
}

/* Fills |body| (an object) and picks the SM-DP+ for |m|; false with |why|
 * (and the error code in *code) when the request cannot be relayed, with
 * *refused (REFUSED_*) when that is because the eIM does not relay there. */
static bool es9_request(const EsipaMessageFromIpaToEim_t *m, relay_call *c, json_t *body,
                        long *code, const char **why, int *refused)
{
    esim_service *svc = c->svc;
    const TransactionId_t *t = NULL;
    char key[EIM_SMDP_KEY_LEN];
    bool store_failed = false;
    *code = 127;
    *refused = -1;
    switch (m->present) {
    case EsipaMessageFromIpaToEim_PR_initiateAuthenticationRequestEsipa: {
        const InitiateAuthenticationRequestEsipa_t *q =
            &m->choice.initiateAuthenticationRequestEsipa;
        c->fn = EIM_ES9_INITIATE;
        /* The IPA names the SM-DP+ (from the activation code). */
        if (!q->smdpAddress ||
            !eim_smdp_key((const char *)q->smdpAddress->buf, q->smdpAddress->size, key)) {
            *code = 1; /* invalidDpAddress */
            *why = "no usable smdpAddress";
            return false;
        }
        memcpy(c->smdp, q->smdpAddress->buf, q->smdpAddress->size);
        c->smdp[q->smdpAddress->size] = '\0';
        /* Only to the SM-DP+ of a download trigger the eIM signed and
         * delivered and whose result has not come: the request names no
         * eUICC, so any eUICC's (authenticateClient checks the eUICC). */
        if (!trigger_named(c, c->smdp, "", true, &store_failed)) {
            *why = c->why;
            if (store_failed)
                return false;
            *code = 50; /* smdpAddressMismatch */
            *refused = REFUSED_ADDRESS;
            snprintf(c->why, sizeof c->why,
                     "SM-DP+ %.200s is not that of a download the eIM triggered and awaits",
                     c->smdp);
            return false;
        }
        return set_b64(body, "euiccChallenge", q->euiccChallenge.buf, q->euiccChallenge.size) &&
               json_object_set_new(body, "smdpAddress", json_string(c->smdp)) == 0 &&
               (!q->euiccInfo1 || set_der(body, "euiccInfo1", &asn_DEF_EUICCInfo1, q->euiccInfo1));
    }
    case EsipaMessageFromIpaToEim_PR_authenticateClientRequestEsipa:
        c->fn = EIM_ES9_AUTHENTICATE;
        t = &m->choice.authenticateClientRequestEsipa.transactionId;
        eid_of_auth(&m->choice.authenticateClientRequestEsipa.authenticateServerResponse, c->eid);
        if (!set_wrapped(body, "authenticateServerResponse", 0xBF38,
                         &m->choice.authenticateClientRequestEsipa.authenticateServerResponse))
            return false;
        break;
    case EsipaMessageFromIpaToEim_PR_getBoundProfilePackageRequestEsipa:
        c->fn = EIM_ES9_BPP;
        t = &m->choice.getBoundProfilePackageRequestEsipa.transactionId;
        if (!set_wrapped(body, "prepareDownloadResponse", 0xBF21,
                         &m->choice.getBoundProfilePackageRequestEsipa.prepareDownloadResponse))
            return false;
        break;
    case EsipaMessageFromIpaToEim_PR_cancelSessionRequestEsipa:
        c->fn = EIM_ES9_CANCEL;
        t = &m->choice.cancelSessionRequestEsipa.transactionId;
        if (!set_wrapped(body, "cancelSessionResponse", 0xBF41,
                         &m->choice.cancelSessionRequestEsipa.cancelSessionResponse))
            return false;
        break;
    case EsipaMessageFromIpaToEim_PR_handleNotificationEsipa: {
        c->fn = EIM_ES9_NOTIFY;
        const HandleNotificationEsipa_t *h = &m->choice.handleNotificationEsipa;
        if (h->present != HandleNotificationEsipa_PR_pendingNotification) {
            *why = "only pendingNotification is relayed (eIM package results go in "
                   "ProvideEimPackageResult)";
            return false;
        }
        const PendingNotification_t *pn = &h->choice.pendingNotification;
        const NotificationMetadata_t *md =
            pn->present == PendingNotification_PR_profileInstallationResult
                ? &pn->choice.profileInstallationResult.profileInstallationResultData
                       .notificationMetadata
                : &pn->choice.otherSignedNotification.tbsOtherNotification;
        /* A notification goes where it says (notificationAddress), when a
         * download trigger the eIM delivered named that SM-DP+ (the
         * notification may come after the download's result). */
        if (!eim_smdp_key((const char *)md->notificationAddress.buf, md->notificationAddress.size,
                          key)) {
            *why = "the notification's address is not an SM-DP+ address";
            return false;
        }
        memcpy(c->smdp, md->notificationAddress.buf, md->notificationAddress.size);
        c->smdp[md->notificationAddress.size] = '\0';
        if (!trigger_named(c, c->smdp, "", false, &store_failed)) {
            *why = c->why;
            if (!store_failed) {
                *refused = REFUSED_NOTIFICATION;
                snprintf(c->why, sizeof c->why,
                         "the notification's address %.200s is not that of a download the eIM "
                         "triggered",
                         c->smdp);
            }
            return false;
        }
        return set_der(body, "pendingNotification", &asn_DEF_PendingNotification, pn);
    }
    default:
        return false;
    }
    /* The later steps go where the session began (on any instance). */
    store_relay_session rs;
    esim_error err = {{0}};
    esim_err rc = ESIM_ENOTFOUND;
    char hex[33];
    if (t->size >= 1 && t->size <= 16) {
        txid_hex(t->buf, (size_t)t->size, hex);
        rc = esim_store_relay_session_get(svc->st, hex, &rs, &err);
    }
    if (rc == ESIM_OK && rs.created_ms < esim_now_ms() - RELAY_SESSION_TTL_MS)
        rc = ESIM_ENOTFOUND;
    if (rc != ESIM_OK && rc != ESIM_ENOTFOUND) {
        svc->m.store_errors++;
        snprintf(c->why, sizeof c->why, "the eIM's store failed: %.200s", err.msg);
        *why = c->why;
        return false;
    }
    if (rc == ESIM_ENOTFOUND) {
        *code = c->fn == EIM_ES9_AUTHENTICATE ? 10 : c->fn == EIM_ES9_BPP ? 95 : 1;
        *why = "unknown transactionId: no session relayed by this eIM";
        return false;
    }
    snprintf(c->smdp, sizeof c->smdp, "%s", rs.smdp);
    c->session_ms = rs.created_ms;
    memcpy(c->txid, t->buf, (size_t)t->size);
    c->txid_len = (size_t)t->size;
    if (c->fn == EIM_ES9_AUTHENTICATE && c->eid[0]) {
        /* The eUICC (its certificate's EID) must be one the eIM triggered
         * this SM-DP+'s download for, that download still awaited. */
        if (!trigger_named(c, c->smdp, c->eid, true, &store_failed)) {
            *why = c->why;
            if (store_failed)
                return false;
            *code = 7; /* eidMismatch */
            *refused = REFUSED_EID;
            snprintf(c->why, sizeof c->why,
                     "the eUICC %.32s has no download from SM-DP+ %.180s that the eIM triggered "
                     "and awaits",
                     c->eid, c->smdp);
            return false;
        }
        if (strcmp(rs.eid, c->eid) != 0)
            session_put(svc, t->buf, (size_t)t->size, rs.smdp, c->eid, rs.created_ms);
    } else if (!c->eid[0]) {
        snprintf(c->eid, sizeof c->eid, "%s", rs.eid);
    }
    return set_txid(body, t);
}

void eim_relay(esim_service *svc, struct evhttp_request *req, const void *msg, const uint8_t *der,
               size_t len)
{
    (void)der;
    (void)len;
    const EsipaMessageFromIpaToEim_t *m = msg;
    eim_relay_state *r = relay_state(svc);
    if (!r) {
        eim_reply(svc, req, 503, NULL, 0, "ESipa: out of memory for the relay to the SM-DP+");
        return;
    }
    relay_call *c = calloc(1, sizeof *c);
    json_t *body = json_object();
    long code = 127;
    int refused = -1;
    const char *why = "out of memory";
    bool ok = c && body && r->n_calls < RELAY_MAX_CALLS;
    if (c && body && !ok)
        why = "too many relayed requests in flight; try again in a moment";
    if (ok) {
        c->svc = svc;
        c->req = req;
        why = "the request cannot be put in ES9+ form";
        ok = es9_request(m, c, body, &code, &why, &refused);
    }
    if (!ok) {
        svc->eim->m.relayed[1]++;
        if (refused >= 0) {
            /* No connection: the eIM relays only to the SM-DP+s of the
             * downloads it triggered. */
            svc->eim->m.relay_refused[refused]++;
            svc_log(svc, ESIM_LOG_WARN, "eim_relay_refused", "smdp", c->smdp, "function",
                    fn_name[c->fn], "eid", c->eid, "refused", refused_name[refused], "reason", why,
                    NULL);
        }
        esim_buf a = {0};
        if (c && c->fn == EIM_ES9_NOTIFY)
            eim_reply(svc, req, 400, NULL, 0, why);
        else if (c && error_answer(c->fn, code, &a) == ESIM_OK && a.len)
            eim_reply(svc, req, 200, a.data, a.len, NULL);
        else
            eim_reply(svc, req, 503, NULL, 0, why);
        esim_buf_free(&a);
        json_decref(body);
        if (c)
            call_free(c);
        return;
    }
    char url[400];
    snprintf(url, sizeof url, "https://%s" ES9_PATH "%s", c->smdp, fn_name[c->fn]);
    c->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    c->headers = curl_slist_append(NULL, "Content-Type: application/json");
    c->headers =
        c->headers ? curl_slist_append(c->headers, "X-Admin-Protocol: gsma/rsp/v2.2.0") : NULL;
    c->easy = c->body && c->headers ? curl_easy_init() : NULL;
    if (!c->easy) {
        svc->eim->m.relayed[1]++;
        eim_reply(svc, req, 503, NULL, 0, "ESipa: out of memory for the relay to the SM-DP+");
        call_free(c);
        return;
    }
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)RELAY_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "esim-mdm eIM");
    /* The one CA of --eim-smdp-ca, else the system's store, loaded once
     * (curl_loop_set_ca). */
    curl_loop_set_ca(e, svc->eim_smdp_ca_path, svc->system_store);
    if (curl_multi_add_handle(r->loop.multi, e) != CURLM_OK) {
        svc->eim->m.relayed[1]++;
        eim_reply(svc, req, 503, NULL, 0, "ESipa: cannot start the request to the SM-DP+");
        call_free(c);
        return;
    }
    c->next = r->calls;
    r->calls = c;
    r->n_calls++;
}

void eim_relay_free(struct svc_eim *e)
{
    eim_relay_state *r = e->relay;
    if (!r)
        return;
    /* evhttp_free already closed the IPAs' connections and their requests. */
    while (r->calls) {
        relay_call *c = r->calls;
        r->calls = c->next;
        curl_multi_remove_handle(r->loop.multi, c->easy);
        call_free(c);
    }
    curl_loop_free(&r->loop);
    free(r);
    e->relay = NULL;
}
