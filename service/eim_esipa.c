/*
 * eim_esipa.c — the eIM's ESipa messages in DER (SGP.32 v1.0, through the
 * sgp32/ layer): a poll (GetEimPackageRequest) gets the eUICC's next
 * package, signed with its next counter value in the same transaction that
 * records it; a result (ProvideEimPackageResult) is verified against the
 * eUICC certificate, the counter and the eimId, recorded, and answered with
 * the acknowledgements of the notifications it carried.
 *
 * A v1.0 result carries no EID, so the eIM puts the eUICC's EID (16 bytes)
 * in each package's transactionId / eimTransactionId, which the eUICC echoes
 * in its result; an IpaEuiccDataResponse is matched by the EID in its eUICC
 * certificate (subject serialNumber).
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "service/eim.h"
#include "service/service_internal.h"
#include "sgp32/sgp32.h"

#define EIM_PACKAGES_SCANNED 50

/* ---- answers ----------------------------------------------------------------------------- */

static void reply_der(esim_service *svc, struct evhttp_request *req, const esim_buf *der)
{
    eim_reply(svc, req, 200, der->data, der->len, NULL);
}

static void reply_no_package(esim_service *svc, struct evhttp_request *req)
{
    esim_buf b = {0};
    if (sgp32_no_package(&b) != ESIM_OK) {
        eim_reply(svc, req, 500, NULL, 0, "out of memory");
        return;
    }
    reply_der(svc, req, &b);
    esim_buf_free(&b);
}

static void reply_bad(esim_service *svc, struct evhttp_request *req, const char *what)
{
    svc->eim->m.refused++;
    svc->m.malformed++;
    eim_reply(svc, req, 400, NULL, 0, what);
}

static esim_err set_octets(OCTET_STRING_t *o, const void *data, size_t len)
{
    return OCTET_STRING_fromBuf(o, (const char *)data, (int)len) == 0 ? ESIM_OK : ESIM_ENOMEM;
}

/* ---- building packages ------------------------------------------------------------------- */

static esim_err iccid_octets(Iccid_t *out, const char *iccid)
{
    uint8_t b[10];
    if (sgp32_iccid_to_bytes(iccid, b, NULL) != ESIM_OK)
        return ESIM_EINVAL;
    return set_octets(out, b, sizeof b);
}

/* One PSMO or eCO of the stored description into the package. */
static esim_err add_op(svc_eim *e, EuiccPackage_t *pkg, const json_t *op)
{
    const char *name = json_string_value(json_object_get(op, "op"));
    const char *iccid = json_string_value(json_object_get(op, "iccid"));
    const char *eim_id = json_string_value(json_object_get(op, "eim_id"));
    if (!name)
        return ESIM_EINVAL;
    esim_err rc = ESIM_OK;
    if (pkg->present == EuiccPackage_PR_psmoList) {
        Psmo_t *p = calloc(1, sizeof *p);
        if (!p)
            return ESIM_ENOMEM;
        if (strcmp(name, "enable") == 0) {
            p->present = Psmo_PR_enable;
            rc = iccid_octets(&p->choice.enable.iccid, iccid);
            if (rc == ESIM_OK && json_is_true(json_object_get(op, "rollback")) &&
                !(p->choice.enable.rollbackFlag = calloc(1, sizeof(NULL_t))))
                rc = ESIM_ENOMEM;
        } else if (strcmp(name, "disable") == 0) {
            p->present = Psmo_PR_disable;
            rc = iccid_octets(&p->choice.disable.iccid, iccid);
        } else if (strcmp(name, "delete") == 0) {
            p->present = Psmo_PR_delete;
            rc = iccid_octets(&p->choice.delete.iccid, iccid);
        } else if (strcmp(name, "list_profiles") == 0) {
            p->present = Psmo_PR_listProfileInfo;
        } else if (strcmp(name, "get_rat") == 0) {
            p->present = Psmo_PR_getRAT;
        } else {
            rc = ESIM_EINVAL;
        }
        if (rc == ESIM_OK && ASN_SEQUENCE_ADD(&pkg->choice.psmoList.list, p) != 0)
            rc = ESIM_ENOMEM;
        if (rc != ESIM_OK)
            sgp32_free(&asn_DEF_Psmo, p);
        return rc;
    }
    Eco_t *c = calloc(1, sizeof *c);
    if (!c)
        return ESIM_ENOMEM;
    if (strcmp(name, "delete_eim") == 0) {
        c->present = Eco_PR_deleteEim;
        rc = set_octets(&c->choice.deleteEim.eimId, eim_id, strlen(eim_id));
    } else if (strcmp(name, "list_eim") == 0) {
        c->present = Eco_PR_listEim;
    } else if (strcmp(name, "add_eim") == 0 || strcmp(name, "update_eim") == 0) {
        bool add = strcmp(name, "add_eim") == 0;
        c->present = add ? Eco_PR_addEim : Eco_PR_updateEim;
        EimConfigurationData_t *d = add ? &c->choice.addEim : &c->choice.updateEim;
        const char *fqdn = json_string_value(json_object_get(op, "eim_fqdn"));
        const char *cert = json_string_value(json_object_get(op, "certificate"));
        json_t *ctr = json_object_get(op, "counter");
        rc = set_octets(&d->eimId, eim_id, strlen(eim_id));
        if (rc == ESIM_OK && fqdn)
            rc = (d->eimFqdn = OCTET_STRING_new_fromBuf(&asn_DEF_UTF8String, fqdn, -1))
                     ? ESIM_OK
                     : ESIM_ENOMEM;
        if (rc == ESIM_OK && ctr) {
            d->counterValue = calloc(1, sizeof *d->counterValue);
            if (d->counterValue)
                *d->counterValue = (long)json_integer_value(ctr);
            else
                rc = ESIM_ENOMEM;
        }
        if (rc == ESIM_OK && cert) {
            esim_buf der = {0};
            void *obj = NULL;
            rc = esim_base64_decode(cert, strlen(cert), &der, NULL);
            if (rc == ESIM_OK)
                rc = sgp32_decode(&asn_DEF_Certificate, der.data, der.len, &obj, NULL);
            esim_buf_free(&der);
            d->eimPublicKeyData = rc == ESIM_OK ? calloc(1, sizeof *d->eimPublicKeyData) : NULL;
            if (rc == ESIM_OK && !d->eimPublicKeyData)
                rc = ESIM_ENOMEM;
            if (rc == ESIM_OK) {
                d->eimPublicKeyData->present =
                    EimConfigurationData__eimPublicKeyData_PR_eimCertificate;
                d->eimPublicKeyData->choice.eimCertificate = *(Certificate_t *)obj;
                free(obj);
            } else {
                sgp32_free(&asn_DEF_Certificate, obj);
            }
        }
    } else {
        rc = ESIM_EINVAL;
    }
    (void)e;
    if (rc == ESIM_OK && ASN_SEQUENCE_ADD(&pkg->choice.ecoList.list, c) != 0)
        rc = ESIM_ENOMEM;
    if (rc != ESIM_OK)
        sgp32_free(&asn_DEF_Eco, c);
    return rc;
}

/*
 * The GetEimPackageResponse for the queued package |desc| of |dev|: signs a
 * PSMO/eCO package with |counter| (taken by the caller). DER appended to
 * |out|.
 */
static esim_err build_package(svc_eim *e, const store_iot_device *dev, const json_t *desc,
                              int64_t counter, esim_buf *out, esim_error *err)
{
    const char *kind = json_string_value(json_object_get(desc, "kind"));
    uint8_t eid[16];
    esim_err rc = sgp32_eid_to_bytes(dev->eid, eid, err);
    if (rc != ESIM_OK || !kind)
        return rc != ESIM_OK ? rc : esim_fail(err, ESIM_EINVAL, "a package without a kind");
    GetEimPackageResponse_t *r = calloc(1, sizeof *r);
    if (!r)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (strcmp(kind, "euicc_data") == 0) {
        /* The certificates: eumCertificate [5] and euiccCertificate [6]. */
        static const uint8_t tags[] = {0xA5, 0xA6};
        r->present = GetEimPackageResponse_PR_ipaEuiccDataRequest;
        rc = set_octets(&r->choice.ipaEuiccDataRequest.tagList, tags, sizeof tags);
    } else if (strcmp(kind, "download") == 0) {
        const char *ac = json_string_value(json_object_get(desc, "activation_code"));
        ProfileDownloadTriggerRequest_t *t = &r->choice.profileDownloadTriggerRequest;
        r->present = GetEimPackageResponse_PR_profileDownloadTriggerRequest;
        t->profileDownloadData = calloc(1, sizeof *t->profileDownloadData);
        t->eimTransactionId = calloc(1, sizeof *t->eimTransactionId);
        if (!t->profileDownloadData || !t->eimTransactionId || !ac) {
            rc = ESIM_ENOMEM;
        } else {
            t->profileDownloadData->present = ProfileDownloadData_PR_activationCode;
            rc = set_octets(&t->profileDownloadData->choice.activationCode, ac, strlen(ac));
            if (rc == ESIM_OK)
                rc = set_octets(t->eimTransactionId, eid, sizeof eid);
        }
    } else {
        EuiccPackageRequest_t *q = &r->choice.euiccPackageRequest;
        EuiccPackageSigned_t *s = &q->euiccPackageSigned;
        r->present = GetEimPackageResponse_PR_euiccPackageRequest;
        rc = set_octets(&s->eimId, e->eim_id, strlen(e->eim_id));
        if (rc == ESIM_OK)
            rc = set_octets(&s->eidValue, eid, sizeof eid);
        s->counterValue = (long)counter;
        if (rc == ESIM_OK && !(s->transactionId = calloc(1, sizeof *s->transactionId)))
            rc = ESIM_ENOMEM;
        if (rc == ESIM_OK)
            rc = set_octets(s->transactionId, eid, sizeof eid);
        s->euiccPackage.present =
            strcmp(kind, "eco") == 0 ? EuiccPackage_PR_ecoList : EuiccPackage_PR_psmoList;
        const json_t *ops = json_object_get(desc, "operations");
        for (size_t i = 0; rc == ESIM_OK && i < json_array_size(ops); i++)
            rc = add_op(e, &s->euiccPackage, json_array_get(ops, i));
        long token = (long)dev->association_token;
        if (rc == ESIM_OK)
            rc =
                sgp32_package_sign(q, e->cert.key, dev->association_token > 0 ? &token : NULL, err);
    }
    if (rc == ESIM_OK)
        rc = sgp32_encode(&asn_DEF_GetEimPackageResponse, r, out, err);
    else if (rc == ESIM_ENOMEM || rc == ESIM_EINVAL)
        esim_fail(err, rc, "cannot build the package");
    sgp32_free(&asn_DEF_GetEimPackageResponse, r);
    return rc;
}

static bool trigger_smdp(const store_iot_package *p, char smdp[256]);

/* ---- a poll -------------------------------------------------------------------------------- */

static void on_poll(esim_service *svc, struct evhttp_request *req, const GetEimPackageRequest_t *g)
{
    svc_eim *e = svc->eim;
    char eid[33];
    esim_error err = {{0}};
    if (sgp32_eid_from_bytes(g->eidValue.buf, g->eidValue.size, eid, &err) != ESIM_OK ||
        esim_eid_validate(eid, &err) != ESIM_OK) {
        reply_bad(svc, req, "GetEimPackageRequest: eidValue is not an EID");
        return;
    }
    int64_t now = esim_now_ms();
    store_iot_device dev;
    esim_err rc = esim_store_iot_poll(svc->st, eid, now, &dev, &err);
    if (rc != ESIM_OK) {
        svc->m.store_errors++;
        eim_reply(svc, req, 503, NULL, 0, "the eIM's store failed; poll again later");
        return;
    }
    if (strcmp(dev.state, "unregistered") == 0) {
        esim_buf_free(&dev.euicc_cert);
        e->m.polls[2]++;
        reply_no_package(svc, req);
        return;
    }
    /* The next package, its counter and its record: one unit. */
    esim_buf der = {0};
    store_exchange_out out = {0};
    json_t *desc = NULL;
    rc = esim_store_unit_begin(svc->st, &err);
    if (rc == ESIM_OK) {
        store_exchange_in in = {.udid = eid, .status = "Idle", .eid = eid};
        rc = esim_store_device_exchange(svc->st, &in, now, &out, &err);
    }
    bool have = rc == ESIM_OK && out.next.present;
    if (have) {
        desc = json_loadb((const char *)out.next.body.data, out.next.body.len, 0, NULL);
        const char *kind = json_string_value(json_object_get(desc, "kind"));
        int64_t counter = 0;
        bool signed_pkg = kind && (strcmp(kind, "psmo") == 0 || strcmp(kind, "eco") == 0);
        if (!kind)
            rc = esim_fail(&err, ESIM_EINVAL, "queued package %s is not an eIM package",
                           out.next.command_uuid);
        if (rc == ESIM_OK && signed_pkg)
            rc = esim_store_iot_counter_next(svc->st, eid, now, &counter, &err);
        if (rc == ESIM_OK)
            rc = build_package(e, &dev, desc, counter, &der, &err);
        store_iot_package *p = NULL;
        size_t n = 0;
        if (rc == ESIM_OK)
            rc = esim_store_iot_packages(svc->st, eid, out.next.command_uuid, 1, &p, &n, &err);
        if (rc == ESIM_OK && n == 1) {
            snprintf(p->state, sizeof p->state, "sent");
            p->counter = counter;
            p->sent_ms = now;
            esim_buf_free(&p->request);
            rc = esim_buf_append(&p->request, der.data, der.len);
            /* A trigger, now signed and delivered: its SM-DP+ is one the
             * relay may reach, until the result comes (eim_relay.c). */
            char smdp[256];
            p->smdp[0] = '\0';
            if (rc == ESIM_OK && strcmp(kind, "download") == 0 && trigger_smdp(p, smdp))
                eim_smdp_key(smdp, strlen(smdp), p->smdp);
            if (rc == ESIM_OK)
                rc = esim_store_iot_package_put(svc->st, p, now, &err);
        }
        esim_store_iot_packages_free(p, n);
    }
    esim_err end = esim_store_unit_end(svc->st, rc == ESIM_OK, &err);
    if (rc == ESIM_OK)
        rc = end;
    json_decref(desc);
    esim_buf_free(&out.next.body);
    esim_buf_free(&dev.euicc_cert);
    if (rc != ESIM_OK) {
        esim_buf_free(&der);
        if (rc == ESIM_ESTORE)
            svc->m.store_errors++;
        esim_store_iot_update(svc->st, eid, NULL, NULL, 0, err.msg, now, NULL);
        eim_reply(svc, req, rc == ESIM_ESTORE ? 503 : 500, NULL, 0, err.msg);
        return;
    }
    if (!have) {
        e->m.polls[1]++;
        reply_no_package(svc, req);
        return;
    }
    e->m.polls[0]++;
    svc->m.commands_sent++;
    reply_der(svc, req, &der);
    esim_buf_free(&der);
}

/* ---- results in words ------------------------------------------------------------------------ */

static const char *code_words(EuiccResultData_PR kind, long code)
{
    if (code == 0)
        return "ok";
    if (code == 127)
        return "undefinedError";
    switch (kind) {
    case EuiccResultData_PR_enableResult:
    case EuiccResultData_PR_deleteResult:
        return code == 1 ? "iccidOrAidNotFound" : code == 2 ? "profileNotInDisabledState" : "?";
    case EuiccResultData_PR_disableResult:
        return code == 1 ? "iccidOrAidNotFound" : code == 2 ? "profileNotInEnabledState" : "?";
    case EuiccResultData_PR_configureAutoEnableResult:
        return code == 1 ? "insufficientMemory" : code == 7 ? "commandError" : "?";
    case EuiccResultData_PR_deleteEimResult:
        return code == 1   ? "eimNotFound"
               : code == 2 ? "lastEimDeleted"
               : code == 7 ? "commandError"
                           : "?";
    case EuiccResultData_PR_updateEimResult:
    case EuiccResultData_PR_addEimResult:
        return code == 1   ? (kind == EuiccResultData_PR_addEimResult ? "insufficientMemory"
                                                                      : "eimNotFound")
               : code == 3 ? "ciPKUnknown"
               : code == 5 ? "invalidAssociationToken"
               : code == 6 ? "counterValueOutOfRange"
               : code == 7 ? "commandError"
                           : "?";
    case EuiccResultData_PR_processingTerminated:
        return code == 1   ? "resultSizeOverflow"
               : code == 2 ? "unknownOrDamagedCommand"
               : code == 3 ? "interruption"
                           : "?";
    default:
        return "?";
    }
}

static const char *package_error_words(long code)
{
    switch (code) {
    case 3:
        return "invalidEid";
    case 4:
        return "replayError";
    case 6:
        return "counterValueOutOfRange";
    case 15:
        return "sizeOverflow";
    default:
        return "undefinedError";
    }
}

static void words_add(char *w, size_t len, const char *fmt, const char *a, const char *b)
{
    size_t used = strlen(w);
    if (used + 8 < len)
        snprintf(w + used, len - used, "%s%s%s%s", used ? "; " : "", a, fmt, b ? b : "");
}

/* One operation's result code on |o| and in |words|; |failed| clears
 * *all_ok. */
static void put_code(json_t *o, char *words, size_t len, const char *op, long code, const char *cw,
                     bool failed, bool *all_ok)
{
    json_object_set_new(o, "code", json_integer(code));
    json_object_set_new(o, "words", json_string(cw));
    words_add(words, len, ": ", op, cw);
    if (failed)
        *all_ok = false;
}

/* The result list of a signed result in words: |res| gets "results",
 * "profiles", "eims"; |words| a sentence; *all_ok whether every operation
 * succeeded. */
static void results_words(const EuiccPackageResultDataSigned_t *d, json_t *res, char *words,
                          size_t len, bool *all_ok)
{
    json_t *list = json_array();
    *all_ok = true;
    for (int i = 0; i < d->euiccResult.list.count; i++) {
        const EuiccResultData_t *r = d->euiccResult.list.array[i];
        json_t *o = json_object();
        char buf[64];
        switch (r->present) {
        case EuiccResultData_PR_enableResult:
        case EuiccResultData_PR_disableResult:
        case EuiccResultData_PR_deleteResult:
        case EuiccResultData_PR_configureAutoEnableResult:
        case EuiccResultData_PR_deleteEimResult:
        case EuiccResultData_PR_updateEimResult:
        case EuiccResultData_PR_rollbackResult:
        case EuiccResultData_PR_processingTerminated: {
            long code =
                r->present == EuiccResultData_PR_enableResult    ? r->choice.enableResult
                : r->present == EuiccResultData_PR_disableResult ? r->choice.disableResult
                : r->present == EuiccResultData_PR_deleteResult  ? r->choice.deleteResult
                : r->present == EuiccResultData_PR_configureAutoEnableResult
                    ? r->choice.configureAutoEnableResult
                : r->present == EuiccResultData_PR_deleteEimResult ? r->choice.deleteEimResult
                : r->present == EuiccResultData_PR_updateEimResult ? r->choice.updateEimResult
                : r->present == EuiccResultData_PR_rollbackResult  ? r->choice.rollbackResult
                                                                   : r->choice.processingTerminated;
            const char *op = r->present == EuiccResultData_PR_enableResult    ? "enable"
                             : r->present == EuiccResultData_PR_disableResult ? "disable"
                             : r->present == EuiccResultData_PR_deleteResult  ? "delete"
                             : r->present == EuiccResultData_PR_configureAutoEnableResult
                                 ? "configure_auto_enable"
                             : r->present == EuiccResultData_PR_deleteEimResult ? "delete_eim"
                             : r->present == EuiccResultData_PR_updateEimResult ? "update_eim"
                             : r->present == EuiccResultData_PR_rollbackResult  ? "rollback"
                                                                                : "processing";
            const char *cw = code_words(r->present, code);
            json_object_set_new(o, "op", json_string(op));
            put_code(o, words, len, op, code, cw, code != 0, all_ok);
            break;
        }
        case EuiccResultData_PR_listProfileInfoResult: {
            const Sgp32ProfileInfoListResponse_t *l = &r->choice.listProfileInfoResult;
            json_object_set_new(o, "op", json_string("list_profiles"));
            if (l->present == Sgp32ProfileInfoListResponse_PR_profileInfoListOk) {
                json_t *profiles = json_array();
                for (int k = 0; k < l->choice.profileInfoListOk.list.count; k++) {
                    const ProfileInfo_t *p = l->choice.profileInfoListOk.list.array[k];
                    char iccid[21] = "";
                    if (p->iccid)
                        sgp32_iccid_from_bytes(p->iccid->buf, p->iccid->size, iccid, NULL);
                    long st = p->profileState ? *p->profileState : 0;
                    json_array_append_new(profiles, json_pack("{s:s,s:s}", "iccid", iccid, "state",
                                                              st == 1 ? "enabled" : "disabled"));
                }
                snprintf(buf, sizeof buf, "%d profile%s", l->choice.profileInfoListOk.list.count,
                         l->choice.profileInfoListOk.list.count == 1 ? "" : "s");
                json_object_set(res, "profiles", profiles);
                json_object_set_new(o, "profiles", profiles);
                words_add(words, len, ": ", "list profiles", buf);
            } else {
                long code = l->choice.profileInfoListError;
                const char *cw = code == 1    ? "incorrectInputValues"
                                 : code == 11 ? "profileChangeOngoing"
                                              : "undefinedError";
                put_code(o, words, len, "list profiles", code, cw, true, all_ok);
            }
            break;
        }
        case EuiccResultData_PR_getRATResult:
            json_object_set_new(o, "op", json_string("get_rat"));
            snprintf(buf, sizeof buf, "%d rule%s", r->choice.getRATResult.list.count,
                     r->choice.getRATResult.list.count == 1 ? "" : "s");
            json_object_set_new(o, "words", json_string(buf));
            words_add(words, len, ": ", "get the RAT", buf);
            break;
        case EuiccResultData_PR_addEimResult: {
            const AddEimResult_t *a = &r->choice.addEimResult;
            json_object_set_new(o, "op", json_string("add_eim"));
            if (a->present == AddEimResult_PR_associationToken) {
                json_object_set_new(o, "association_token",
                                    json_integer(a->choice.associationToken));
                words_add(words, len, ": ", "add eIM", "ok (association token given)");
            } else {
                long code = a->choice.addEimResultCode;
                const char *cw = code_words(r->present, code);
                put_code(o, words, len, "add eIM", code, cw, code != 0, all_ok);
            }
            break;
        }
        case EuiccResultData_PR_listEimResult: {
            const ListEimResult_t *l = &r->choice.listEimResult;
            json_object_set_new(o, "op", json_string("list_eim"));
            if (l->present == ListEimResult_PR_eimIdList) {
                json_t *eims = json_array();
                for (int k = 0; k < l->choice.eimIdList.list.count; k++) {
                    const EimIdInfo_t *x = l->choice.eimIdList.list.array[k];
                    json_array_append_new(
                        eims, json_stringn((const char *)x->eimId.buf, (size_t)x->eimId.size));
                }
                snprintf(buf, sizeof buf, "%d eIM%s", l->choice.eimIdList.list.count,
                         l->choice.eimIdList.list.count == 1 ? "" : "s");
                json_object_set(res, "eims", eims);
                json_object_set_new(o, "eims", eims);
                words_add(words, len, ": ", "list eIMs", buf);
            } else {
                words_add(words, len, ": ", "list eIMs", "commandError");
                *all_ok = false;
            }
            break;
        }
        default:
            json_object_set_new(o, "op", json_string("unknown"));
            break;
        }
        json_array_append_new(list, o);
    }
    json_object_set_new(res, "results", list);
}

/* ---- a result ------------------------------------------------------------------------------ */

typedef struct {
    char udid[ESIM_EID_LEN + 1];
    char uuid[128];
    char status[24];
    char *result;
} result_hook_ctx;

static void hook_free(void *p)
{
    result_hook_ctx *h = p;
    if (h)
        free(h->result);
    free(h);
}

static void hook_run(esim_service *svc, void *p)
{
    result_hook_ctx *h = p;
    esim_service_result r = {
        .udid = h->udid,
        .command_uuid = h->uuid,
        .status = h->status,
        .platform = "iot",
        .iot_result = h->result,
    };
    svc_run_result_hooks(svc, &r);
}

/* The sent package of |eid| this result answers: the one signed with
 * |counter| (> 0), else the newest sent one of |kind|. *n_sent counts the
 * sent packages of that kind. */
static store_iot_package *find_sent(esim_service *svc, const char *eid, const char *kind,
                                    int64_t counter, store_iot_package **all, size_t *n_all)
{
    *all = NULL;
    *n_all = 0;
    if (esim_store_iot_packages(svc->st, eid, NULL, EIM_PACKAGES_SCANNED, all, n_all, NULL) !=
        ESIM_OK)
        return NULL;
    store_iot_package *newest = NULL;
    for (size_t i = 0; i < *n_all; i++) {
        store_iot_package *p = &(*all)[i];
        if (strcmp(p->state, "sent") != 0)
            continue;
        bool same_kind = strcmp(p->kind, kind) == 0 ||
                         (strcmp(kind, "psmo") == 0 && strcmp(p->kind, "eco") == 0);
        if (counter > 0 && p->counter == counter && same_kind)
            return p;
        if (same_kind && !newest)
            newest = p;
    }
    return newest;
}

/* Records the outcome of |p| (state, words, error, the DER answered),
 * answers the queue entry and, after the commit, runs the result hooks. */
static esim_err apply_result(esim_service *svc, store_iot_package *p, const char *state,
                             json_t *res, const char *words, const char *error, const uint8_t *der,
                             size_t len, esim_error *err)
{
    int64_t now = esim_now_ms();
    json_object_set_new(res, "kind", json_string(p->kind));
    json_object_set_new(res, "state", json_string(state));
    json_object_set_new(res, "words", json_string(words));
    if (error && *error)
        json_object_set_new(res, "error", json_string(error));
    char *text = json_dumps(res, JSON_COMPACT);
    if (!text)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    bool ok = strcmp(state, "done") == 0;
    esim_err rc = esim_store_unit_begin(svc->st, err);
    store_exchange_out out = {0};
    /* Its webhook event (acknowledge_event, the DER in raw_payload), as for
     * every result. */
    esim_msg m = {.kind = ESIM_MSG_RESULT,
                  .status = ok ? ESIM_STATUS_ACKNOWLEDGED : ESIM_STATUS_ERROR};
    snprintf(m.udid, sizeof m.udid, "%s", p->eid);
    snprintf(m.command_uuid, sizeof m.command_uuid, "%s", p->command_uuid);
    /* On a store without batches its outbox rows are written in this unit. */
    bool in_unit = webhooks_in_unit(svc);
    hook_job *hooks = NULL;
    if (rc == ESIM_OK) {
        store_exchange_in in = {
            .udid = p->eid,
            .status = ok ? "Acknowledged" : "Error",
            .command_uuid = p->command_uuid,
            .raw = der,
            .raw_len = len,
            .hold_next = true,
        };
        rc = esim_store_device_exchange(svc->st, &in, now, &out, err);
        esim_buf_free(&out.next.body);
    }
    if (rc == ESIM_OK) {
        snprintf(p->state, sizeof p->state, "%s", state);
        snprintf(p->error, sizeof p->error, "%s", error ? error : "");
        free(p->result_words);
        p->result_words = text;
        text = NULL;
        p->answered_ms = now;
        esim_buf_free(&p->result);
        rc = esim_buf_append(&p->result, der, len);
        if (rc == ESIM_OK)
            rc = esim_store_iot_package_put(svc->st, p, now, err);
    }
    if (rc == ESIM_OK && error && *error)
        rc = esim_store_iot_update(svc->st, p->eid, NULL, NULL, 0, error, now, err);
    if (rc == ESIM_OK && in_unit && out.outcome == STORE_RESULT_APPLIED)
        rc = webhooks_write(svc, svc->st, &m, der, len, NULL, &hooks, err);
    esim_err end = esim_store_unit_end(svc->st, rc == ESIM_OK, err);
    if (rc == ESIM_OK)
        rc = end;
    free(text);
    if (rc != ESIM_OK) {
        webhooks_discard(hooks);
        return rc;
    }
    svc_eim *e = svc->eim;
    e->m.results[strcmp(state, "done") == 0              ? 0
                 : strcmp(state, "failed") == 0          ? 1
                 : strcmp(state, "signature_error") == 0 ? 2
                                                         : 3]++;
    svc->m.results[ok ? ESIM_STATUS_ACKNOWLEDGED : ESIM_STATUS_ERROR]++;
    if (out.outcome == STORE_RESULT_APPLIED) {
        /* Its webhooks: written with the unit above, or to the outbox in
         * the loop turn's batch (SQLite). */
        if (in_unit)
            svc_after_commit_written(svc, &m, hooks, false, NULL, NULL);
        else
            svc_after_commit(svc, &m, der, len, NULL, false, NULL, NULL);
        esim_msg_free(&m);
        result_hook_ctx *h = calloc(1, sizeof *h);
        if (h) {
            snprintf(h->udid, sizeof h->udid, "%s", p->eid);
            snprintf(h->uuid, sizeof h->uuid, "%s", p->command_uuid);
            snprintf(h->status, sizeof h->status, "%s", ok ? "Acknowledged" : "Error");
            h->result = p->result_words ? strdup(p->result_words) : NULL;
            svc_after_commit_call(svc, hook_run, h, hook_free);
        }
    } else if (out.outcome == STORE_RESULT_ANOMALY) {
        svc->m.anomalies++;
    }
    return ESIM_OK;
}

/* The public key of the eUICC certificate the eIM keeps for |eid|. */
static EVP_PKEY *euicc_key(esim_service *svc, const char *eid)
{
    store_iot_device d;
    if (esim_store_iot_get(svc->st, eid, &d, NULL) != ESIM_OK)
        return NULL;
    if (!d.euicc_cert.len) {
        esim_buf_free(&d.euicc_cert);
        return NULL;
    }
    /* The same certificate's key from its slot (the bytes are what the
     * eIM stored once they verified, so their digest names them). */
    unsigned char sha[32];
    svc_sha256(svc, d.euicc_cert.data, d.euicc_cert.len, sha);
    svc_eim *e = svc->eim;
    size_t i = ((size_t)sha[0] | (size_t)sha[1] << 8) % EIM_KEY_SLOTS;
    if (e->keys[i].key && memcmp(e->keys[i].sha, sha, sizeof sha) == 0) {
        esim_buf_free(&d.euicc_cert);
        return EVP_PKEY_up_ref(e->keys[i].key) ? e->keys[i].key : NULL;
    }
    const unsigned char *p = d.euicc_cert.data;
    X509 *x = d2i_X509(NULL, &p, (long)d.euicc_cert.len);
    EVP_PKEY *k = x ? X509_get_pubkey(x) : NULL;
    X509_free(x);
    esim_buf_free(&d.euicc_cert);
    if (k && EVP_PKEY_up_ref(k)) {
        EVP_PKEY_free(e->keys[i].key);
        e->keys[i].key = k;
        memcpy(e->keys[i].sha, sha, sizeof sha);
    }
    return k;
}

/* The eimSignature of the request a package record holds. */
static bool request_signature(const store_iot_package *p, uint8_t sig[128], size_t *len)
{
    void *obj = NULL;
    if (sgp32_decode(&asn_DEF_GetEimPackageResponse, p->request.data, p->request.len, &obj, NULL) !=
        ESIM_OK)
        return false;
    GetEimPackageResponse_t *r = obj;
    bool ok = r->present == GetEimPackageResponse_PR_euiccPackageRequest &&
              r->choice.euiccPackageRequest.eimSignature.size <= 128;
    if (ok) {
        *len = (size_t)r->choice.euiccPackageRequest.eimSignature.size;
        memcpy(sig, r->choice.euiccPackageRequest.eimSignature.buf, *len);
    }
    sgp32_free(&asn_DEF_GetEimPackageResponse, obj);
    return ok;
}

/* An EuiccPackageResult: verified, recorded. *seq gets its seqNumber (-1
 * when it has none). Answers the request itself when it fails. */
static bool on_package_result(esim_service *svc, struct evhttp_request *req,
                              const EuiccPackageResult_t *r, const uint8_t *der, size_t len,
                              long *seq)
{
    *seq = -1;
    svc_eim *e = svc->eim;
    const UTF8String_t *eim_id = NULL;
    const TransactionId_t *txid = NULL;
    long counter = 0;
    if (r->present == EuiccPackageResult_PR_euiccPackageResultSigned) {
        const EuiccPackageResultDataSigned_t *d =
            &r->choice.euiccPackageResultSigned.euiccPackageResultDataSigned;
        eim_id = &d->eimId;
        txid = d->transactionId;
        counter = d->counterValue;
        *seq = d->seqNumber;
    } else if (r->present == EuiccPackageResult_PR_euiccPackageErrorSigned) {
        const EuiccPackageErrorDataSigned_t *d =
            &r->choice.euiccPackageErrorSigned.euiccPackageErrorDataSigned;
        eim_id = &d->eimId;
        txid = d->transactionId;
        counter = d->counterValue;
    }
    char eid[33];
    if (!txid || sgp32_eid_from_bytes(txid->buf, txid->size, eid, NULL) != ESIM_OK ||
        esim_eid_validate(eid, NULL) != ESIM_OK) {
        reply_bad(svc, req,
                  "ProvideEimPackageResult: the result's transactionId does not name an eUICC "
                  "(the eIM sends the EID there; the eUICC echoes it)");
        return false;
    }
    store_iot_package *all = NULL;
    size_t n = 0;
    store_iot_package *p = find_sent(svc, eid, "psmo", counter, &all, &n);
    if (!p) {
        esim_store_iot_packages_free(all, n);
        reply_bad(svc, req, "ProvideEimPackageResult: no package of this eUICC awaits a result");
        return false;
    }
    json_t *res = json_object();
    char words[700] = "", error[256] = "";
    const char *state = "done";
    if (r->present == EuiccPackageResult_PR_euiccPackageErrorUnsigned) {
        state = "failed";
        snprintf(words, sizeof words,
                 "the eUICC refused the package unsigned: it did not accept the eIM's signature "
                 "or association (eimId %.*s)",
                 (int)r->choice.euiccPackageErrorUnsigned.eimId.size,
                 (const char *)r->choice.euiccPackageErrorUnsigned.eimId.buf);
    } else if (strlen(e->eim_id) != (size_t)eim_id->size ||
               memcmp(e->eim_id, eim_id->buf, eim_id->size) != 0) {
        state = "counter_error";
        snprintf(error, sizeof error, "the result names eimId '%.*s', not this eIM's '%s'",
                 (int)eim_id->size > 64 ? 64 : (int)eim_id->size, (const char *)eim_id->buf,
                 e->eim_id);
    } else if (counter != p->counter) {
        state = "counter_error";
        snprintf(error, sizeof error,
                 "the result echoes counter %ld, the package was signed with %lld", counter,
                 (long long)p->counter);
    } else {
        uint8_t sig[128];
        size_t sig_len = 0;
        EVP_PKEY *k = euicc_key(svc, eid);
        esim_error ve = {{0}};
        if (!k)
            snprintf(error, sizeof error,
                     "no verified eUICC certificate to check the result's signature with");
        else if (!request_signature(p, sig, &sig_len))
            snprintf(error, sizeof error, "the package's own signature cannot be read back");
        else if (sgp32_result_verify(r, k, sig, sig_len, &ve) != ESIM_OK)
            snprintf(error, sizeof error,
                     "the result's signature does not verify with the eUICC certificate: %.150s",
                     ve.msg);
        EVP_PKEY_free(k);
        if (error[0]) {
            state = "signature_error";
        } else if (r->present == EuiccPackageResult_PR_euiccPackageErrorSigned) {
            long code =
                r->choice.euiccPackageErrorSigned.euiccPackageErrorDataSigned.euiccPackageErrorCode;
            state = "failed";
            json_object_set_new(res, "code", json_integer(code));
            snprintf(words, sizeof words, "the eUICC refused the package: %s (%ld)",
                     package_error_words(code), code);
        } else {
            bool all_ok = true;
            results_words(&r->choice.euiccPackageResultSigned.euiccPackageResultDataSigned, res,
                          words, sizeof words, &all_ok);
            state = all_ok ? "done" : "failed";
        }
    }
    if (!words[0])
        snprintf(words, sizeof words, "%s", error);
    esim_error err = {{0}};
    esim_err rc = apply_result(svc, p, state, res, words, error, der, len, &err);
    json_decref(res);
    esim_store_iot_packages_free(all, n);
    if (rc != ESIM_OK) {
        eim_reply(svc, req, rc == ESIM_ESTORE ? 503 : 500, NULL, 0, err.msg);
        return false;
    }
    return true;
}

/* The seqNumber of each notification of |l| into |ack|. */
static void ack_notifications(const RetrieveNotificationsListResponse_t *l,
                              EimAcknowledgements_t *ack)
{
    if (l->present != RetrieveNotificationsListResponse_PR_notificationList)
        return;
    for (int i = 0; i < l->choice.notificationList.list.count; i++) {
        const PendingNotification_t *pn = l->choice.notificationList.list.array[i];
        long seq = pn->present == PendingNotification_PR_profileInstallationResult
                       ? pn->choice.profileInstallationResult.profileInstallationResultData
                             .notificationMetadata.seqNumber
                       : pn->choice.otherSignedNotification.tbsOtherNotification.seqNumber;
        long *v = calloc(1, sizeof *v);
        if (v) {
            *v = seq;
            if (ASN_SEQUENCE_ADD(&ack->list, v) != 0)
                free(v);
        }
    }
}

static void ack_one(EimAcknowledgements_t *ack, long seq)
{
    long *v = seq >= 0 ? calloc(1, sizeof *v) : NULL;
    if (v) {
        *v = seq;
        if (ASN_SEQUENCE_ADD(&ack->list, v) != 0)
            free(v);
    }
}

/* Verifies an eUICC certificate up to the CI through its EUM certificate;
 * its EID (subject serialNumber) into |eid|. */
static esim_err verify_euicc_cert(svc_eim *e, const Certificate_t *euicc, const Certificate_t *eum,
                                  esim_buf *euicc_der, char eid[33], esim_error *err)
{
    esim_buf eum_der = {0};
    esim_err rc = sgp32_encode(&asn_DEF_Certificate, euicc, euicc_der, err);
    if (rc == ESIM_OK && eum)
        rc = sgp32_encode(&asn_DEF_Certificate, eum, &eum_der, err);
    if (rc != ESIM_OK) {
        esim_buf_free(&eum_der);
        return rc;
    }
    const unsigned char *p = euicc_der->data;
    X509 *leaf = d2i_X509(NULL, &p, (long)euicc_der->len);
    p = eum_der.data;
    X509 *mid = eum_der.len ? d2i_X509(NULL, &p, (long)eum_der.len) : NULL;
    esim_buf_free(&eum_der);
    STACK_OF(X509) *chain = sk_X509_new_null();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    if (!leaf)
        rc = esim_fail(err, ESIM_ECRYPTO, "the eUICC certificate is not an X.509 certificate");
    else if (!chain || !ctx || (mid && !sk_X509_push(chain, mid)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (rc == ESIM_OK) {
        if (X509_STORE_CTX_init(ctx, e->ci, leaf, chain) != 1)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        else if (X509_verify_cert(ctx) != 1)
            rc = esim_fail(err, ESIM_ECRYPTO,
                           "the eUICC certificate does not chain to the eUICC CI (--euicc-ci): %s",
                           X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        else if (esim_cert_subject_field(leaf, NID_serialNumber, eid, 33) != ESIM_OK ||
                 esim_eid_validate(eid, NULL) != ESIM_OK)
            rc = esim_fail(err, ESIM_ECRYPTO,
                           "the eUICC certificate names no EID in its subject serialNumber");
    }
    X509_STORE_CTX_free(ctx);
    if (chain)
        sk_X509_pop_free(chain, X509_free);
    else
        X509_free(mid);
    X509_free(leaf);
    return rc;
}

static bool on_euicc_data(esim_service *svc, struct evhttp_request *req,
                          const IpaEuiccDataResponse_t *r, const uint8_t *der, size_t len)
{
    if (r->present != IpaEuiccDataResponse_PR_ipaEuiccData ||
        !r->choice.ipaEuiccData.euiccCertificate) {
        reply_bad(svc, req,
                  "ProvideEimPackageResult: the IpaEuiccDataResponse carries no eUICC certificate "
                  "(the eIM matches it to its eUICC by the certificate's EID)");
        return false;
    }
    const IpaEuiccData_t *d = &r->choice.ipaEuiccData;
    esim_buf cert = {0};
    char eid[33] = "";
    esim_error verr = {{0}};
    esim_err vrc =
        verify_euicc_cert(svc->eim, d->euiccCertificate, d->eumCertificate, &cert, eid, &verr);
    if (!eid[0]) {
        /* Without a verified EID the answer cannot be pinned on anyone. */
        esim_buf_free(&cert);
        reply_bad(svc, req, verr.msg[0] ? verr.msg : "the eUICC certificate is unreadable");
        return false;
    }
    store_iot_package *all = NULL;
    size_t n = 0;
    store_iot_package *p = find_sent(svc, eid, "euicc_data", 0, &all, &n);
    if (!p) {
        esim_buf_free(&cert);
        esim_store_iot_packages_free(all, n);
        reply_bad(svc, req, "ProvideEimPackageResult: no eUICC data request awaits an answer");
        return false;
    }
    json_t *res = json_object();
    char words[400];
    esim_error err = {{0}};
    esim_err rc = ESIM_OK;
    if (vrc == ESIM_OK) {
        rc = esim_store_iot_update(svc->st, eid, "ready", cert.data, cert.len, "", esim_now_ms(),
                                   &err);
        snprintf(words, sizeof words, "eUICC certificate verified up to the eUICC CI and kept");
    } else {
        snprintf(words, sizeof words, "%.390s", verr.msg);
    }
    if (rc == ESIM_OK)
        rc = apply_result(svc, p, vrc == ESIM_OK ? "done" : "signature_error", res, words,
                          vrc == ESIM_OK ? NULL : verr.msg, der, len, &err);
    json_decref(res);
    esim_buf_free(&cert);
    esim_store_iot_packages_free(all, n);
    if (rc != ESIM_OK) {
        eim_reply(svc, req, rc == ESIM_ESTORE ? 503 : 500, NULL, 0, err.msg);
        return false;
    }
    return true;
}

/* The SM-DP+ address (HOST[:PORT]) of the activation code of the download
 * trigger |p| as it was sent. */
static bool trigger_smdp(const store_iot_package *p, char smdp[256])
{
    EsipaMessageFromEimToIpa_t *m = NULL;
    bool ok = false;
    if (p->request.len &&
        sgp32_decode(&asn_DEF_EsipaMessageFromEimToIpa, p->request.data, p->request.len,
                     (void **)&m, NULL) == ESIM_OK &&
        m->present == EsipaMessageFromEimToIpa_PR_getEimPackageResponse &&
        m->choice.getEimPackageResponse.present ==
            GetEimPackageResponse_PR_profileDownloadTriggerRequest) {
        const ProfileDownloadTriggerRequest_t *t =
            &m->choice.getEimPackageResponse.choice.profileDownloadTriggerRequest;
        if (t->profileDownloadData &&
            t->profileDownloadData->present == ProfileDownloadData_PR_activationCode) {
            const OCTET_STRING_t *ac = &t->profileDownloadData->choice.activationCode;
            char code[256];
            snprintf(code, sizeof code, "%.*s", ac->size > 255 ? 255 : ac->size,
                     (const char *)ac->buf);
            const char *a = strncmp(code, "LPA:", 4) == 0 ? code + 4 : code;
            if (strncmp(a, "1$", 2) == 0) {
                a += 2;
                size_t n = strcspn(a, "$");
                ok = n > 0 && n < 256;
                if (ok)
                    snprintf(smdp, 256, "%.*s", (int)n, a);
            }
        }
    }
    sgp32_free(&asn_DEF_EsipaMessageFromEimToIpa, m);
    return ok;
}

static bool on_download_result(esim_service *svc, struct evhttp_request *req,
                               const ProfileDownloadTriggerResult_t *r, const uint8_t *der,
                               size_t len, long *seq)
{
    *seq = -1;
    char eid[33];
    if (!r->eimTransactionId ||
        sgp32_eid_from_bytes(r->eimTransactionId->buf, r->eimTransactionId->size, eid, NULL) !=
            ESIM_OK ||
        esim_eid_validate(eid, NULL) != ESIM_OK) {
        reply_bad(svc, req,
                  "ProvideEimPackageResult: the download result's eimTransactionId does not name "
                  "an eUICC (the eIM sends the EID there)");
        return false;
    }
    store_iot_package *all = NULL;
    size_t n = 0;
    store_iot_package *p = find_sent(svc, eid, "download", 0, &all, &n);
    if (!p) {
        esim_store_iot_packages_free(all, n);
        reply_bad(svc, req, "ProvideEimPackageResult: no download trigger awaits a result");
        return false;
    }
    json_t *res = json_object();
    char words[400];
    const char *state = "failed";
    if (r->profileDownloadTriggerResultData.present ==
        ProfileDownloadTriggerResult__profileDownloadTriggerResultData_PR_profileInstallationResult) {
        const ProfileInstallationResultData_t *d =
            &r->profileDownloadTriggerResultData.choice.profileInstallationResult
                 .profileInstallationResultData;
        char iccid[21] = "";
        if (d->notificationMetadata.iccid)
            sgp32_iccid_from_bytes(d->notificationMetadata.iccid->buf,
                                   d->notificationMetadata.iccid->size, iccid, NULL);
        *seq = d->notificationMetadata.seqNumber;
        if (iccid[0])
            json_object_set_new(res, "iccid", json_string(iccid));
        if (d->finalResult.present == ProfileInstallationResultData__finalResult_PR_successResult) {
            state = "done";
            snprintf(words, sizeof words, "profile %s installed", iccid[0] ? iccid : "(no ICCID)");
        } else {
            const ErrorResult_t *x = &d->finalResult.choice.errorResult;
            json_object_set_new(res, "code", json_integer(x->errorReason));
            snprintf(words, sizeof words, "the download failed: bppCommandId %ld, errorReason %ld",
                     x->bppCommandId, x->errorReason);
        }
    } else {
        const OCTET_STRING_t *er =
            r->profileDownloadTriggerResultData.choice.profileDownloadError.errorResponse;
        /* An indirect download the eIM's relay could not complete: its
         * reason (the SM-DP+ unreachable, refusing) goes with the IPA's. */
        char smdp[256];
        const char *relay = trigger_smdp(p, smdp) ? eim_relay_failure(svc->eim, smdp, eid) : NULL;
        snprintf(words, sizeof words, "the IPA could not download the profile%s%.*s%s%.150s",
                 er && er->size ? ": " : "", er ? (int)(er->size > 200 ? 200 : er->size) : 0,
                 er ? (const char *)er->buf : "", relay ? "; the eIM's relay: " : "",
                 relay ? relay : "");
        svc_utf8_sanitize(words);
    }
    esim_error err = {{0}};
    esim_err rc = apply_result(svc, p, state, res, words, NULL, der, len, &err);
    json_decref(res);
    esim_store_iot_packages_free(all, n);
    if (rc != ESIM_OK) {
        eim_reply(svc, req, rc == ESIM_ESTORE ? 503 : 500, NULL, 0, err.msg);
        return false;
    }
    return true;
}

/* A ProvideEimPackageResult, on its own (answered with its
 * ProvideEimPackageResultResponse) or in a HandleNotificationEsipa (SGP.32
 * v1.0 lets an IPA send it there; answered 204: HandleNotification has no
 * ESipa answer, so the acknowledgements stay unsaid and the IPA sends those
 * notifications again). */
static void on_result(esim_service *svc, struct evhttp_request *req,
                      const ProvideEimPackageResult_t *r, const uint8_t *der, size_t len,
                      bool in_notification)
{
    ProvideEimPackageResultResponse_t *resp = calloc(1, sizeof *resp);
    EimAcknowledgements_t *ack = calloc(1, sizeof *ack);
    if (!resp || !ack) {
        free(resp);
        free(ack);
        eim_reply(svc, req, 500, NULL, 0, "out of memory");
        return;
    }
    bool ok = true;
    long seq = -1;
    switch (r->present) {
    case ProvideEimPackageResult_PR_euiccPackageResult:
        ok = on_package_result(svc, req, &r->choice.euiccPackageResult, der, len, &seq);
        ack_one(ack, seq);
        break;
    case ProvideEimPackageResult_PR_ePRAndNotifications:
        ok = on_package_result(svc, req, &r->choice.ePRAndNotifications.euiccPackageResult, der,
                               len, &seq);
        ack_one(ack, seq);
        ack_notifications(&r->choice.ePRAndNotifications.notificationList, ack);
        break;
    case ProvideEimPackageResult_PR_ipaEuiccDataResponse:
        ok = on_euicc_data(svc, req, &r->choice.ipaEuiccDataResponse, der, len);
        break;
    case ProvideEimPackageResult_PR_profileDownloadTriggerResult:
        ok = on_download_result(svc, req, &r->choice.profileDownloadTriggerResult, der, len, &seq);
        ack_one(ack, seq);
        break;
    default:
        /* eimPackageError: the IPA could not use the package. A v1.0
         * error names neither the eUICC nor the package: nothing to record
         * it against. */
        reply_bad(svc, req,
                  "ProvideEimPackageResult: an eimPackageError names no package; poll again");
        ok = false;
        break;
    }
    if (ok && in_notification) {
        eim_reply(svc, req, 204, "", 0, NULL);
    } else if (ok) {
        esim_buf out = {0};
        esim_error err = {{0}};
        if (ack->list.count > 0) {
            resp->eimAcknowledgements = ack;
            ack = NULL;
        }
        if (sgp32_encode(&asn_DEF_ProvideEimPackageResultResponse, resp, &out, &err) == ESIM_OK)
            reply_der(svc, req, &out);
        else
            eim_reply(svc, req, 500, NULL, 0, err.msg);
        esim_buf_free(&out);
    }
    sgp32_free(&asn_DEF_EimAcknowledgements, ack);
    sgp32_free(&asn_DEF_ProvideEimPackageResultResponse, resp);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

void eim_esipa(esim_service *svc, struct evhttp_request *req, const unsigned char *der, size_t len)
{
    void *obj = NULL;
    esim_error err = {{0}};
    esim_err rc = sgp32_decode(&asn_DEF_EsipaMessageFromIpaToEim, der, len, &obj, &err);
    if (rc != ESIM_OK) {
        char text[400];
        snprintf(text, sizeof text, "ESipa: not a DER message from an IPA: %.350s", err.msg);
        reply_bad(svc, req, text);
        return;
    }
    EsipaMessageFromIpaToEim_t *m = obj;
    switch (m->present) {
    case EsipaMessageFromIpaToEim_PR_getEimPackageRequest:
        on_poll(svc, req, &m->choice.getEimPackageRequest);
        break;
    case EsipaMessageFromIpaToEim_PR_provideEimPackageResult:
        on_result(svc, req, &m->choice.provideEimPackageResult, der, len, false);
        break;
    case EsipaMessageFromIpaToEim_PR_handleNotificationEsipa:
        if (m->choice.handleNotificationEsipa.present ==
            HandleNotificationEsipa_PR_provideEimPackageResult)
            on_result(svc, req, &m->choice.handleNotificationEsipa.choice.provideEimPackageResult,
                      der, len, true);
        else
            eim_relay(svc, req, m, der, len); /* a pendingNotification, for its SM-DP+ */
        break;
    case EsipaMessageFromIpaToEim_PR_initiateAuthenticationRequestEsipa:
    case EsipaMessageFromIpaToEim_PR_authenticateClientRequestEsipa:
    case EsipaMessageFromIpaToEim_PR_getBoundProfilePackageRequestEsipa:
    case EsipaMessageFromIpaToEim_PR_cancelSessionRequestEsipa:
        eim_relay(svc, req, m, der, len);
        break;
    default:
        reply_bad(svc, req, "ESipa: a message this eIM does not take (push mode is not offered)");
        break;
    }
    sgp32_free(&asn_DEF_EsipaMessageFromIpaToEim, obj);
}
