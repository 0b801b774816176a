/*
 * eim.c — the eIM for IoT eUICCs (GSMA SGP.32; docs/iot.md): registration
 * of eUICCs, the package queue (each package is a command on the device's
 * queue, its signed DER and result kept beside it in the store), and the
 * ESipa endpoint the IPAs poll, POST /gsma/rsp2/asn1 (eim_esipa.c speaks
 * its DER).
 */
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "service/eim.h"
#include "service/service_internal.h"

#define EIM_MAX_OPS 16

/* ---- set-up ------------------------------------------------------------------------ */

esim_err eim_init(esim_service *svc, esim_error *err)
{
    svc_eim *e = calloc(1, sizeof *e);
    if (!e)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    svc->eim = e;
    esim_err rc = api_iot_routes(svc, err);
    if (rc != ESIM_OK)
        return rc;
    snprintf(e->eim_id, sizeof e->eim_id, "%s", svc->eim_id ? svc->eim_id : "esim-mdm");
    if (strlen(svc->eim_id ? svc->eim_id : "") >= sizeof e->eim_id || !svc_utf8_valid(e->eim_id))
        return esim_fail(err, ESIM_EINVAL, "--eim-id: 1 to %zu bytes of UTF-8",
                         sizeof e->eim_id - 1);
    bool any = svc->eim_key_path || svc->eim_cert_path || svc->euicc_ci_path;
    if (!any)
        return ESIM_OK;
    if (!svc->eim_key_path || !svc->eim_cert_path || !svc->euicc_ci_path)
        return esim_fail(err, ESIM_EINVAL,
                         "the eIM needs --eim-key, --eim-cert and --euicc-ci together");
    rc = esim_cert_load(svc->eim_cert_path, svc->eim_key_path, &e->cert, err);
    if (rc != ESIM_OK)
        return rc;
    if (EVP_PKEY_get_base_id(e->cert.key) != EVP_PKEY_EC || EVP_PKEY_get_bits(e->cert.key) != 256)
        return esim_fail(err, ESIM_ECRYPTO, "--eim-key: the eIM signs with ECDSA P-256");
    unsigned char *der = NULL;
    int len = i2d_X509(e->cert.x509, &der);
    if (len <= 0)
        return esim_fail(err, ESIM_ECRYPTO, "--eim-cert: cannot encode the certificate");
    rc = esim_buf_append(&e->cert_der, der, (size_t)len);
    OPENSSL_free(der);
    if (rc != ESIM_OK)
        return esim_fail(err, rc, "out of memory");
    if ((rc = auth_load_ca_file(svc->euicc_ci_path, "eUICC CI file", &e->ci, err)) != ESIM_OK)
        return rc;
    e->on = true;
    return ESIM_OK;
}

void eim_free(esim_service *svc)
{
    svc_eim *e = svc->eim;
    if (!e)
        return;
    eim_relay_free(e);
    esim_cert_clear(&e->cert);
    esim_buf_free(&e->cert_der);
    X509_STORE_free(e->ci);
    for (size_t i = 0; i < EIM_KEY_SLOTS; i++)
        EVP_PKEY_free(e->keys[i].key);
    free(e);
    svc->eim = NULL;
}

void eim_metrics(esim_service *svc, esim_buf *out)
{
    svc_eim *e = svc->eim;
    if (!e)
        return;
    char text[2000];
    snprintf(text, sizeof text,
             "# TYPE esim_mdm_eim_polls_total counter\n"
             "esim_mdm_eim_polls_total{outcome=\"package\"} %llu\n"
             "esim_mdm_eim_polls_total{outcome=\"none\"} %llu\n"
             "esim_mdm_eim_polls_total{outcome=\"unregistered\"} %llu\n"
             "# TYPE esim_mdm_eim_results_total counter\n"
             "esim_mdm_eim_results_total{state=\"done\"} %llu\n"
             "esim_mdm_eim_results_total{state=\"failed\"} %llu\n"
             "esim_mdm_eim_results_total{state=\"signature_error\"} %llu\n"
             "esim_mdm_eim_results_total{state=\"counter_error\"} %llu\n"
             "# TYPE esim_mdm_eim_refused_total counter\n"
             "esim_mdm_eim_refused_total %llu\n"
             "# TYPE esim_mdm_eim_relayed_total counter\n"
             "esim_mdm_eim_relayed_total{outcome=\"ok\"} %llu\n"
             "esim_mdm_eim_relayed_total{outcome=\"failed\"} %llu\n"
             "# TYPE esim_mdm_eim_relay_refused_total counter\n"
             "esim_mdm_eim_relay_refused_total{reason=\"smdp_address\"} %llu\n"
             "esim_mdm_eim_relay_refused_total{reason=\"eid\"} %llu\n"
             "esim_mdm_eim_relay_refused_total{reason=\"notification_address\"} %llu\n",
             (unsigned long long)e->m.polls[0], (unsigned long long)e->m.polls[1],
             (unsigned long long)e->m.polls[2], (unsigned long long)e->m.results[0],
             (unsigned long long)e->m.results[1], (unsigned long long)e->m.results[2],
             (unsigned long long)e->m.results[3], (unsigned long long)e->m.refused,
             (unsigned long long)e->m.relayed[0], (unsigned long long)e->m.relayed[1],
             (unsigned long long)e->m.relay_refused[0], (unsigned long long)e->m.relay_refused[1],
             (unsigned long long)e->m.relay_refused[2]);
    esim_buf_append(out, text, strlen(text));
}

/* ---- package descriptions ---------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *kind;  /* "psmo" or "eco" */
    bool iccid;        /* needs an ICCID */
    bool eim_id;       /* needs an eimId */
    const char *words; /* in a summary */
} op_def;

static const op_def OPS[] = {
    {"enable", "psmo", true, false, "enable"},
    {"disable", "psmo", true, false, "disable"},
    {"delete", "psmo", true, false, "delete"},
    {"list_profiles", "psmo", false, false, "list profiles"},
    {"get_rat", "psmo", false, false, "get the RAT"},
    {"add_eim", "eco", false, true, "add eIM"},
    {"delete_eim", "eco", false, true, "delete eIM"},
    {"update_eim", "eco", false, true, "update eIM"},
    {"list_eim", "eco", false, false, "list eIMs"},
};

static const op_def *op_find(const char *name)
{
    for (size_t i = 0; name && i < sizeof OPS / sizeof OPS[0]; i++)
        if (strcmp(OPS[i].name, name) == 0)
            return &OPS[i];
    return NULL;
}

static void summary_add(char summary[256], const char *words, const char *what)
{
    size_t used = strlen(summary);
    if (used + 4 >= 256)
        return;
    snprintf(summary + used, 256 - used, "%s%s%s%s", used ? ", " : "", words, what ? " " : "",
             what ? what : "");
}

/* One operation of a PSMO or eCO package, checked and copied. */
static esim_err op_read(json_t *in, size_t i, const char **kind, json_t *ops, char summary[256],
                        char field[64], esim_error *err)
{
    snprintf(field, 64, "operations[%zu]", i);
    const op_def *d = op_find(json_string_value(json_object_get(in, "op")));
    if (!json_is_object(in) || !d)
        return esim_fail(err, ESIM_EINVAL,
                         "%s: an object whose \"op\" is enable, disable, delete, list_profiles, "
                         "get_rat (PSMOs) or add_eim, delete_eim, update_eim, list_eim (eCOs)",
                         field);
    if (*kind && strcmp(*kind, d->kind) != 0)
        return esim_fail(err, ESIM_EINVAL,
                         "%s: a package holds PSMOs or eCOs, not both: queue two packages", field);
    *kind = d->kind;
    json_t *o = json_pack("{s:s}", "op", d->name);
    if (!o)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_error e = {{0}};
    if (d->iccid) {
        const char *iccid = json_string_value(json_object_get(in, "iccid"));
        if (!iccid || esim_iccid_validate(iccid, &e) != ESIM_OK) {
            json_decref(o);
            snprintf(field, 64, "operations[%zu].iccid", i);
            return esim_fail(err, ESIM_EINVAL, "%s: %s", field,
                             iccid ? e.msg : "the profile's ICCID is required");
        }
        json_object_set_new(o, "iccid", json_string(iccid));
        summary_add(summary, d->words, iccid);
        json_t *rb = json_object_get(in, "rollback");
        if (rb && (!json_is_boolean(rb) || strcmp(d->name, "enable") != 0)) {
            json_decref(o);
            snprintf(field, 64, "operations[%zu].rollback", i);
            return esim_fail(err, ESIM_EINVAL, "%s: true or false, on enable only", field);
        }
        if (json_is_true(rb))
            json_object_set_new(o, "rollback", json_true());
    } else if (d->eim_id) {
        const char *id = json_string_value(json_object_get(in, "eim_id"));
        if (!id || !*id || strlen(id) > 128 || !svc_utf8_valid(id)) {
            json_decref(o);
            snprintf(field, 64, "operations[%zu].eim_id", i);
            return esim_fail(err, ESIM_EINVAL, "%s: the eIM's eimId, 1 to 128 bytes", field);
        }
        json_object_set_new(o, "eim_id", json_string(id));
        summary_add(summary, d->words, id);
        if (strcmp(d->name, "delete_eim") != 0) {
            const char *fqdn = json_string_value(json_object_get(in, "eim_fqdn"));
            json_t *ctr = json_object_get(in, "counter");
            const char *cert = json_string_value(json_object_get(in, "certificate"));
            if (strcmp(d->name, "add_eim") == 0 && (!fqdn || !cert)) {
                json_decref(o);
                snprintf(field, 64, "operations[%zu]", i);
                return esim_fail(err, ESIM_EINVAL,
                                 "%s: add_eim needs eim_fqdn (HOST[:PORT]) and certificate (the "
                                 "eIM's certificate, base64 DER)",
                                 field);
            }
            if (fqdn && (!*fqdn || strlen(fqdn) > 255 || !svc_utf8_valid(fqdn))) {
                json_decref(o);
                snprintf(field, 64, "operations[%zu].eim_fqdn", i);
                return esim_fail(err, ESIM_EINVAL, "%s: HOST[:PORT], 1 to 255 bytes", field);
            }
            if (ctr && (!json_is_integer(ctr) || json_integer_value(ctr) < 0)) {
                json_decref(o);
                snprintf(field, 64, "operations[%zu].counter", i);
                return esim_fail(err, ESIM_EINVAL, "%s: an integer from 0", field);
            }
            esim_buf der = {0};
            if (cert && (esim_base64_decode(cert, strlen(cert), &der, NULL) != ESIM_OK ||
                         der.len < 16 || der.len > 4096)) {
                esim_buf_free(&der);
                json_decref(o);
                snprintf(field, 64, "operations[%zu].certificate", i);
                return esim_fail(err, ESIM_EINVAL, "%s: a certificate in base64 DER", field);
            }
            esim_buf_free(&der);
            if (fqdn)
                json_object_set_new(o, "eim_fqdn", json_string(fqdn));
            if (ctr)
                json_object_set_new(o, "counter", json_integer(json_integer_value(ctr)));
            if (cert)
                json_object_set_new(o, "certificate", json_string(cert));
        }
    } else {
        summary_add(summary, d->words, NULL);
    }
    json_array_append_new(ops, o);
    return ESIM_OK;
}

/* An activation code as an IPA takes it: "1$ADDRESS$MATCHING_ID[$OID]",
 * at most 255 bytes. The address is a host name, or host:port / an IP
 * address and port (test SM-DP+s listen on loopback ports). */
static esim_err activation_code_check(const char *code, esim_activation_code *out, esim_error *err)
{
    char with_prefix[300];
    snprintf(with_prefix, sizeof with_prefix, "LPA:%.290s", code);
    if (strlen(code) > 255)
        return esim_fail(err, ESIM_EINVAL, "an activation code has at most 255 bytes");
    if (esim_activation_code_parse(with_prefix, out, NULL) == ESIM_OK)
        return ESIM_OK;
    /* host:port: check the host and the port, then the rest without them. */
    const char *addr = strncmp(code, "1$", 2) == 0 ? code + 2 : NULL;
    size_t alen = addr ? strcspn(addr, "$") : 0;
    const char *colon = addr ? memchr(addr, ':', alen) : NULL;
    char host[256] = "";
    long port = 0;
    char *end = NULL;
    if (colon && (size_t)(colon - addr) < sizeof host) {
        memcpy(host, addr, (size_t)(colon - addr));
        port = strtol(colon + 1, &end, 10);
    }
    bool host_ok = host[0] && (esim_fqdn_validate(host, NULL) == ESIM_OK ||
                               strspn(host, "0123456789.") == strlen(host));
    if (!host_ok || port < 1 || port > 65535 || end != addr + alen)
        return esim_activation_code_parse(with_prefix, out, err);
    char rest[300];
    snprintf(rest, sizeof rest, "LPA:1$smdp.invalid%s", addr + alen);
    esim_err rc = esim_activation_code_parse(rest, out, err);
    if (rc == ESIM_OK)
        snprintf(out->smdp_address, sizeof out->smdp_address, "%.*s", (int)alen, addr);
    return rc;
}

esim_err eim_package_read(json_t *desc, json_t **norm, char kind[16], char request_type[64],
                          char summary[256], char field[64], esim_error *err)
{
    *norm = NULL;
    summary[0] = '\0';
    field[0] = '\0';
    json_t *ops = json_object_get(desc, "operations");
    json_t *dl = json_object_get(desc, "download");
    json_t *data = json_object_get(desc, "euicc_data");
    int forms = (ops != NULL) + (dl != NULL) + (data != NULL);
    if (!json_is_object(desc) || forms != 1) {
        snprintf(field, 64, "operations");
        return esim_fail(err, ESIM_EINVAL,
                         "a package is one of: \"operations\" (PSMOs or eCOs), \"download\" "
                         "({\"activation_code\"}) or \"euicc_data\": true");
    }
    if (data) {
        if (!json_is_true(data)) {
            snprintf(field, 64, "euicc_data");
            return esim_fail(err, ESIM_EINVAL, "euicc_data: true asks the eUICC's data");
        }
        snprintf(kind, 16, "euicc_data");
        snprintf(request_type, 64, "IpaEuiccDataRequest");
        snprintf(summary, 256, "eUICC data (certificates)");
        *norm = json_pack("{s:s}", "kind", kind);
    } else if (dl) {
        const char *ac = json_string_value(json_object_get(dl, "activation_code"));
        esim_activation_code parsed;
        esim_error e = {{0}};
        snprintf(field, 64, "download.activation_code");
        if (!ac)
            return esim_fail(err, ESIM_EINVAL,
                             "%s: the activation code the IPA downloads with (1$SMDP$MATCHING)",
                             field);
        const char *code = strncmp(ac, "LPA:", 4) == 0 ? ac + 4 : ac;
        if (activation_code_check(code, &parsed, &e) != ESIM_OK)
            return esim_fail(err, ESIM_EINVAL, "%s: %s", field, e.msg);
        field[0] = '\0';
        snprintf(kind, 16, "download");
        snprintf(request_type, 64, "ProfileDownloadTrigger");
        snprintf(summary, 256, "download from %.200s", parsed.smdp_address);
        *norm = json_pack("{s:s,s:s}", "kind", kind, "activation_code", code);
    } else {
        size_t n = json_array_size(ops);
        if (!json_is_array(ops) || n == 0 || n > EIM_MAX_OPS) {
            snprintf(field, 64, "operations");
            return esim_fail(err, ESIM_EINVAL, "operations: an array of 1 to %d operations",
                             EIM_MAX_OPS);
        }
        const char *k = NULL;
        json_t *list = json_array();
        for (size_t i = 0; list && i < n; i++) {
            esim_err rc = op_read(json_array_get(ops, i), i, &k, list, summary, field, err);
            if (rc != ESIM_OK) {
                json_decref(list);
                return rc;
            }
        }
        snprintf(kind, 16, "%s", k ? k : "");
        snprintf(request_type, 64, "EuiccPackage.%s", strcmp(k, "psmo") == 0 ? "PSMO" : "eCO");
        *norm = list ? json_pack("{s:s,s:o}", "kind", kind, "operations", list) : NULL;
    }
    return *norm ? ESIM_OK : esim_fail(err, ESIM_ENOMEM, "out of memory");
}

/* ---- registration and queueing ----------------------------------------------------------- */

/* Queues |norm| for |eids| with its package records on |st|, as one unit;
 * nothing else. */
static esim_err enqueue_package_on(store *st, const char *uuid, json_t *norm, const char *kind,
                                   const char *request_type, const char *summary,
                                   const char *const *eids, size_t n, const esim_enqueue_opts *opts,
                                   esim_error *err)
{
    char *body = json_dumps(norm, JSON_COMPACT | JSON_SORT_KEYS);
    if (!body)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    int64_t now = esim_now_ms();
    store_command_in in = {
        .uuid = uuid,
        .request_type = request_type,
        .body = body,
        .body_len = strlen(body),
        .priority = opts ? opts->priority : 0,
        .expires_at = opts ? opts->expires_at : 0,
    };
    esim_err rc = esim_store_unit_begin(st, err);
    if (rc == ESIM_OK) {
        rc = esim_store_command_enqueue(st, &in, eids, n, now, err);
        for (size_t i = 0; rc == ESIM_OK && i < n; i++) {
            store_iot_package p = {0};
            snprintf(p.command_uuid, sizeof p.command_uuid, "%s", uuid);
            snprintf(p.eid, sizeof p.eid, "%s", eids[i]);
            snprintf(p.kind, sizeof p.kind, "%s", kind);
            snprintf(p.state, sizeof p.state, "queued");
            snprintf(p.summary, sizeof p.summary, "%s", summary);
            p.created_ms = now;
            rc = esim_store_iot_package_put(st, &p, now, err);
        }
        esim_err end = esim_store_unit_end(st, rc == ESIM_OK, err);
        if (rc == ESIM_OK)
            rc = end;
    }
    free(body);
    return rc;
}

esim_err eim_iot_register_on(store *st, const char *eid, int64_t token, int64_t counter,
                             bool *created, eim_counts *counts, esim_error *err)
{
    int64_t now = esim_now_ms();
    esim_err rc = esim_store_unit_begin(st, err);
    if (rc != ESIM_OK)
        return rc;
    rc = esim_store_iot_register(st, eid, token, counter, now, created, err);
    if (rc == ESIM_OK) {
        store_authenticate_in in = {.udid = eid, .topic = "iot", .platform = "iot"};
        rc = esim_store_device_authenticate(st, &in, now, err);
    }
    if (rc == ESIM_OK) {
        /* The eIM's first package: the eUICC's certificates, so every
         * later result can be verified. */
        json_t *norm = json_pack("{s:s}", "kind", "euicc_data");
        char uuid[ESIM_UUID_LEN + 1];
        esim_uuid_new(uuid);
        esim_enqueue_opts first = {.priority = 1000};
        rc = norm ? enqueue_package_on(st, uuid, norm, "euicc_data", "IpaEuiccDataRequest",
                                       "eUICC data (certificates)", &eid, 1, &first, err)
                  : esim_fail(err, ESIM_ENOMEM, "out of memory");
        json_decref(norm);
        counts->store_errors += rc == ESIM_ESTORE;
        counts->enqueued += rc == ESIM_OK;
    }
    esim_err end = esim_store_unit_end(st, rc == ESIM_OK, err);
    if (rc == ESIM_ESTORE || end != ESIM_OK)
        counts->store_errors++;
    return rc == ESIM_OK ? end : rc;
}

/* The checks and the queueing of esim_service_enqueue_iot_on on |st|, nothing
 * else (the caller counts). */
esim_err eim_enqueue_iot_on(store *st, const char *uuid, const char *package_json,
                            const char *const *eids, size_t n, const esim_enqueue_opts *opts,
                            char uuid_out[128], esim_error *err)
{
    if (!st || !package_json || !eids || n == 0)
        return esim_fail(err, ESIM_EINVAL, "an IoT package needs a description and EIDs");
    char fresh[ESIM_UUID_LEN + 1];
    if (!uuid) {
        esim_uuid_new(fresh);
        uuid = fresh;
    }
    if (!*uuid || strlen(uuid) >= 100 || !svc_utf8_valid(uuid))
        return esim_fail(err, ESIM_EINVAL, "a command UUID has 1 to 99 bytes");
    json_error_t je;
    json_t *desc = json_loads(package_json, 0, &je);
    if (!desc)
        return esim_fail(err, ESIM_EINVAL, "the package is not JSON: %s", je.text);
    json_t *norm = NULL;
    char kind[16], rt[64], summary[256], field[64];
    esim_err rc = eim_package_read(desc, &norm, kind, rt, summary, field, err);
    json_decref(desc);
    for (size_t i = 0; rc == ESIM_OK && i < n; i++) {
        store_iot_device d;
        rc = esim_store_iot_get(st, eids[i], &d, NULL);
        esim_buf_free(&d.euicc_cert);
        if (rc == ESIM_ENOTFOUND || (rc == ESIM_OK && strcmp(d.state, "unregistered") == 0))
            rc = esim_fail(err, ESIM_ENOTFOUND,
                           "EID %s is not registered with the eIM (POST /v1/iot/devices)", eids[i]);
        else if (rc != ESIM_OK)
            rc = esim_fail(err, rc, "the store failed");
    }
    if (rc == ESIM_OK)
        rc = enqueue_package_on(st, uuid, norm, kind, rt, summary, eids, n, opts, err);
    json_decref(norm);
    if (rc == ESIM_OK && uuid_out)
        snprintf(uuid_out, 128, "%s", uuid);
    return rc;
}

esim_err esim_service_enqueue_iot_on(const esim_service *svc, store *st, const char *uuid,
                                     const char *package_json, const char *const *eids, size_t n,
                                     const esim_enqueue_opts *opts, esim_error *err)
{
    if (!svc)
        return esim_fail(err, ESIM_EINVAL, "an IoT package needs a description and EIDs");
    return eim_enqueue_iot_on(st, uuid, package_json, eids, n, opts, NULL, err);
}

/* ---- the endpoint ------------------------------------------------------------------------- */

void eim_reply(esim_service *svc, struct evhttp_request *req, int code, const void *der, size_t len,
               const char *text)
{
    if (der)
        http_reply(svc, req, M_ROUTE_MDM, code, EIM_CONTENT_TYPE, der, len);
    else
        http_reply(svc, req, M_ROUTE_MDM, code, "text/plain; charset=utf-8", text, strlen(text));
}

/* Content-Type application/x-gsma-rsp-asn1, parameters allowed. */
static bool content_type_ok(struct evhttp_request *req)
{
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    size_t n = strlen(EIM_CONTENT_TYPE);
    return ct && strncasecmp(ct, EIM_CONTENT_TYPE, n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

void eim_handle(esim_service *svc, struct evhttp_request *req)
{
    svc_eim *e = svc->eim;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        eim_reply(svc, req, 405, NULL, 0, "ESipa: POST DER to this endpoint");
        return;
    }
    if (!content_type_ok(req)) {
        e->m.refused++;
        eim_reply(svc, req, 415, NULL, 0, "ESipa: expected Content-Type " EIM_CONTENT_TYPE);
        return;
    }
    const char *proto =
        evhttp_find_header(evhttp_request_get_input_headers(req), "X-Admin-Protocol");
    if (!proto || strcmp(proto, EIM_ADMIN_PROTOCOL) != 0) {
        e->m.refused++;
        eim_reply(svc, req, 400, NULL, 0,
                  proto ? "ESipa: unsupported X-Admin-Protocol: this eIM speaks " EIM_ADMIN_PROTOCOL
                        : "ESipa: the X-Admin-Protocol header (" EIM_ADMIN_PROTOCOL ") is missing");
        return;
    }
    size_t len = 0;
    const unsigned char *body = http_body(req, &len);
    if (len > svc->cfg.max_body) {
        svc->m.too_big++;
        eim_reply(svc, req, 413, NULL, 0, "ESipa: message too large");
        return;
    }
    if (!e->on) {
        eim_reply(svc, req, 503, NULL, 0,
                  "this service runs no eIM: start it with --eim-key, --eim-cert and --euicc-ci");
        return;
    }
    if (len == 0) {
        e->m.refused++;
        eim_reply(svc, req, 400, NULL, 0, "ESipa: empty body: expected a DER ESipa message");
        return;
    }
    eim_esipa(svc, req, body, len);
}
