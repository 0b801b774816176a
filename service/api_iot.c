/*
 * api_iot.c — the admin API for IoT eUICCs (docs/api.md, "IoT devices"):
 * register eUICCs with the eIM, queue packages (PSMOs, eCOs, download
 * triggers, eUICC data requests), and read each device's diagnosis and each
 * package's outcome. Registered as routes of the service at start-up, so the
 * route table of api.c stays as it is.
 */
#include <stdlib.h>
#include <string.h>

#include "service/eim.h"
#include "service/service_internal.h"

#define IOT_MAX_EIDS 1000
#define IOT_PACKAGES_SHOWN 50

/* ---- registration ------------------------------------------------------------------ */

/* One {"eid", "association_token", "counter"?} registered on |st|: its
 * line of the answer. */
static json_t *register_one(store *st, eim_counts *counts, json_t *d, size_t i)
{
    const char *eid = json_string_value(json_object_get(d, "eid"));
    json_t *tok = json_object_get(d, "association_token");
    json_t *ctr = json_object_get(d, "counter");
    char msg[400] = "";
    if (!json_is_object(d))
        snprintf(msg, sizeof msg, "devices[%zu]: an object {eid, association_token, counter?}", i);
    else if (!eid)
        snprintf(msg, sizeof msg, "devices[%zu].eid: the eUICC's EID (32 digits)", i);
    else if (!json_is_integer(tok) || json_integer_value(tok) < 1)
        snprintf(msg, sizeof msg,
                 "devices[%zu].association_token: the integer from 1 the eUICC gave at "
                 "AddInitialEim",
                 i);
    else if (ctr && (!json_is_integer(ctr) || json_integer_value(ctr) < 0))
        snprintf(msg, sizeof msg, "devices[%zu].counter: the last counter value used, from 0", i);
    if (msg[0])
        return json_pack("{s:s?,s:s,s:s}", "eid", eid, "result", "error", "error", msg);
    bool created = false;
    esim_error e = {{0}};
    esim_err rc = eim_iot_register_on(st, eid, json_integer_value(tok),
                                      ctr ? json_integer_value(ctr) : 0, &created, counts, &e);
    if (rc == ESIM_OK)
        return json_pack("{s:s,s:s}", "eid", eid, "result", "registered");
    if (rc == ESIM_EEXIST)
        return json_pack("{s:s,s:s}", "eid", eid, "result", "exists");
    return json_pack("{s:s,s:s,s:s}", "eid", eid, "result", "error", "error",
                     e.msg[0] ? e.msg : esim_strerror(rc));
}

/* A registration call or a package: the request's JSON (what the worker
 * reads), what the loop counts afterwards. */
typedef struct {
    json_t *body, *list;
    const char **eids;
    size_t n;
    char *text;
    const char *uuid;
    esim_enqueue_opts opts;
    eim_counts counts;
} iot_call;

static void iot_call_free(iot_call *c)
{
    json_decref(c->list);
    json_decref(c->body);
    free(c->eids);
    free(c->text);
    free(c);
}

/* Every registration of the call, each its own unit, and the answer
 * (held), on a store pool worker. */
static void post_devices_run(esim_api_request *r, void *arg)
{
    iot_call *c = arg;
    json_t *out = json_array();
    size_t registered = 0, errors = 0;
    for (size_t i = 0; i < c->n; i++) {
        json_t *line = register_one(r->st, &c->counts, json_array_get(c->list, i), i);
        const char *res = json_string_value(json_object_get(line, "result"));
        registered += res && strcmp(res, "registered") == 0;
        errors += res && strcmp(res, "error") == 0;
        json_array_append_new(out, line);
    }
    api_reply_json(r, 200,
                   json_pack("{s:o,s:I,s:I}", "devices", out, "registered", (json_int_t)registered,
                             "errors", (json_int_t)errors));
}

/* On the loop: the counts (eIM packages are never pushed: the eUICCs poll). */
static void iot_call_then(esim_api_request *r, void *arg)
{
    iot_call *c = arg;
    r->svc->m.store_errors += c->counts.store_errors;
    r->svc->m.enqueued += c->counts.enqueued;
    iot_call_free(c);
}

/* POST /v1/iot/devices {"devices": [{eid, association_token, counter?}]}
 * or one such object. */
static void h_post_devices(esim_api_request *r, void *arg)
{
    (void)arg;
    json_t *body = api_body_json(r);
    if (!body)
        return;
    json_t *list = json_object_get(body, "devices");
    if (!list && json_object_get(body, "eid")) {
        list = json_array();
        json_array_append(list, body);
    } else {
        json_incref(list);
    }
    size_t n = json_array_size(list);
    iot_call *c = NULL;
    if (!json_is_array(list) || n == 0 || n > IOT_MAX_EIDS) {
        api_error(r, 400, "devices",
                  "devices: an array of 1 to %d {eid, association_token, counter?} (or one "
                  "such object)",
                  IOT_MAX_EIDS);
    } else if (!(c = calloc(1, sizeof *c))) {
        api_error(r, 500, NULL, "out of memory");
    } else {
        c->body = body;
        c->list = list;
        c->n = n;
        api_store_job(r, post_devices_run, iot_call_then, c);
        return;
    }
    json_decref(list);
    json_decref(body);
}

/* ---- reading ----------------------------------------------------------------------------- */

static json_t *ms_or_null(int64_t ms)
{
    return ms > 0 ? json_integer(ms) : json_null();
}

static json_t *device_json(const store_iot_device *d)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:o,s:o,s:b,s:o}", "eid", d->eid, "state", d->state,
                     "association_token", (json_int_t)d->association_token, "counter",
                     (json_int_t)d->counter, "last_poll_ms", ms_or_null(d->last_poll_ms),
                     "registered_ms", ms_or_null(d->registered_ms), "certificate",
                     d->euicc_cert.len > 0 || strcmp(d->state, "ready") == 0, "last_error",
                     d->last_error[0] ? json_string(d->last_error) : json_null());
}

static json_t *package_json(const store_iot_package *p)
{
    json_t *words = p->result_words ? json_loads(p->result_words, 0, NULL) : NULL;
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:o}", "command_uuid",
                     p->command_uuid, "eid", p->eid, "kind", p->kind, "summary", p->summary,
                     "state", p->state, "counter",
                     p->counter ? json_integer(p->counter) : json_null(), "created_ms",
                     ms_or_null(p->created_ms), "sent_ms", ms_or_null(p->sent_ms), "answered_ms",
                     ms_or_null(p->answered_ms), "result", words ? words : json_null(), "error",
                     p->error[0] ? json_string(p->error) : json_null());
}

/* GET /v1/iot/devices?after=EID&limit=N */
static void h_get_devices(esim_api_request *r, void *arg)
{
    (void)arg;
    const char *lim = esim_api_query(r, "limit");
    long limit = lim ? strtol(lim, NULL, 10) : 100;
    if (limit < 1 || limit > 1000) {
        api_error(r, 400, "limit", "limit: must be from 1 to 1000");
        return;
    }
    store_iot_device *list = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc =
        esim_store_iot_list(r->st, esim_api_query(r, "after"), (size_t)limit, &list, &n, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), NULL, "%s", e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, device_json(&list[i]));
    json_t *next = n == (size_t)limit ? json_string(list[n - 1].eid) : json_null();
    free(list);
    api_reply_json(r, 200, json_pack("{s:o,s:o}", "devices", arr, "next_after", next));
}

/* What to do next about a device, in words, from what the eIM knows. */
static void next_action(const store_iot_device *d, const store_iot_package *p, size_t n, char *out,
                        size_t len)
{
    size_t queued = 0, sent = 0;
    const store_iot_package *bad = NULL;
    for (size_t i = 0; i < n; i++) {
        queued += strcmp(p[i].state, "queued") == 0;
        sent += strcmp(p[i].state, "sent") == 0;
        if (!bad && (strcmp(p[i].state, "signature_error") == 0 ||
                     strcmp(p[i].state, "counter_error") == 0))
            bad = &p[i];
    }
    if (strcmp(d->state, "unregistered") == 0)
        snprintf(out, len,
                 "not registered: it polls the eIM but gets no packages until it is registered "
                 "with its association token (POST /v1/iot/devices)");
    else if (d->last_poll_ms == 0)
        snprintf(out, len,
                 "waiting for its first poll: check that its IPA has this eIM's address and "
                 "that it is online");
    else if (strcmp(d->state, "registered") == 0)
        snprintf(out, len,
                 "waiting for its eUICC certificates (IpaEuiccDataRequest): results cannot be "
                 "verified before");
    else if (bad)
        snprintf(out, len,
                 "check the eUICC: the result of %s (%s) failed verification (%s); queue the "
                 "operation again if it is still wanted",
                 bad->command_uuid, bad->summary, bad->error);
    else if (sent)
        snprintf(out, len, "waiting for the result of %zu package(s) it has fetched", sent);
    else if (queued)
        snprintf(out, len, "%zu package(s) queued: delivered at its next poll", queued);
    else
        snprintf(out, len, "none: nothing queued");
}

/* GET /v1/iot/devices/:eid — the diagnosis. */
static void h_get_device(esim_api_request *r, void *arg)
{
    (void)arg;
    const char *eid = esim_api_param(r, 0);
    store_iot_device d;
    esim_error e = {{0}};
    esim_err rc = esim_store_iot_get(r->st, eid, &d, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), NULL, "%s", e.msg);
        return;
    }
    store_iot_package *p = NULL;
    size_t n = 0;
    rc = esim_store_iot_packages(r->st, eid, NULL, IOT_PACKAGES_SHOWN, &p, &n, &e);
    if (rc != ESIM_OK) {
        esim_buf_free(&d.euicc_cert);
        api_error(r, api_status_for(rc), NULL, "%s", e.msg);
        return;
    }
    char next[1024];
    next_action(&d, p, n, next, sizeof next);
    json_t *o = device_json(&d);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, package_json(&p[i]));
    json_object_set_new(o, "packages", arr);
    json_object_set_new(o, "next_action", json_string(next));
    esim_store_iot_packages_free(p, n);
    esim_buf_free(&d.euicc_cert);
    api_reply_json(r, 200, o);
}

/* ---- packages ---------------------------------------------------------------------------- */

static void post_packages_run(esim_api_request *r, void *arg)
{
    iot_call *c = arg;
    char out_uuid[128] = "";
    esim_error e = {{0}};
    esim_err rc =
        eim_enqueue_iot_on(r->st, c->uuid, c->text, c->eids, c->n, &c->opts, out_uuid, &e);
    c->counts.store_errors += rc == ESIM_ESTORE;
    c->counts.enqueued += rc == ESIM_OK ? c->n : 0;
    if (rc == ESIM_OK)
        api_reply_json(r, 201,
                       json_pack("{s:s,s:I}", "command_uuid", out_uuid, "eids", (json_int_t)c->n));
    else
        api_error(r, api_status_for(rc), NULL, "%s", e.msg[0] ? e.msg : esim_strerror(rc));
}

/* POST /v1/iot/packages {eids, operations | download | euicc_data, uuid?,
 * priority?, expires_in_s?}: checked here, queued on a store pool worker. */
static void h_post_packages(esim_api_request *r, void *arg)
{
    (void)arg;
    json_t *body = api_body_json(r);
    if (!body)
        return;
    json_t *eids = json_object_get(body, "eids");
    size_t n = json_array_size(eids);
    json_t *uuid = json_object_get(body, "uuid");
    json_t *prio = json_object_get(body, "priority");
    json_t *exp = json_object_get(body, "expires_in_s");
    const char **list = NULL;
    if (!json_is_array(eids) || n == 0 || n > IOT_MAX_EIDS) {
        api_error(r, 400, "eids", "eids: an array of 1 to %d registered EIDs", IOT_MAX_EIDS);
    } else if (uuid && !json_is_string(uuid)) {
        api_error(r, 400, "uuid", "uuid: a string");
    } else if (prio && (!json_is_integer(prio) || json_integer_value(prio) < -1000 ||
                        json_integer_value(prio) > 1000)) {
        api_error(r, 400, "priority", "priority: must be an integer from -1000 to 1000");
    } else if (exp && (!json_is_integer(exp) || json_integer_value(exp) <= 0)) {
        api_error(r, 400, "expires_in_s", "expires_in_s: must be a positive number of seconds");
    } else if (!(list = calloc(n, sizeof *list))) {
        api_error(r, 500, NULL, "out of memory");
    } else {
        bool ok = true;
        for (size_t i = 0; ok && i < n; i++) {
            list[i] = json_string_value(json_array_get(eids, i));
            if (!list[i]) {
                api_error(r, 400, "eids", "eids[%zu]: a string (an EID)", i);
                ok = false;
            }
        }
        /* The description is the body without the queueing fields. */
        json_t *desc = json_deep_copy(body);
        json_object_del(desc, "eids");
        json_object_del(desc, "uuid");
        json_object_del(desc, "priority");
        json_object_del(desc, "expires_in_s");
        char *text = desc ? json_dumps(desc, JSON_COMPACT) : NULL;
        json_decref(desc);
        esim_enqueue_opts o = {
            .priority = prio ? (int)json_integer_value(prio) : 0,
            .expires_at = exp ? esim_now_ms() + json_integer_value(exp) * 1000 : 0,
        };
        iot_call *c = ok && text ? calloc(1, sizeof *c) : NULL;
        if (ok && !c) {
            api_error(r, 500, NULL, "out of memory");
        } else if (ok) {
            c->body = body;
            c->eids = list;
            c->n = n;
            c->text = text;
            c->uuid = json_string_value(uuid);
            c->opts = o;
            api_store_job(r, post_packages_run, iot_call_then, c);
            return;
        }
        free(text);
    }
    free(list);
    json_decref(body);
}

/* GET /v1/iot/packages/:uuid — the package on each eUICC: queue state,
 * package state, counter, result in words, errors. */
static void h_get_package(esim_api_request *r, void *arg)
{
    (void)arg;
    const char *uuid = esim_api_param(r, 0);
    store_command_info info;
    store_queue_entry *entries = NULL;
    size_t ne = 0;
    esim_error e = {{0}};
    esim_err rc = esim_store_command_get(r->st, uuid, NULL, IOT_MAX_EIDS, &info, &entries, &ne, &e);
    store_iot_package *p = NULL;
    size_t n = 0;
    if (rc == ESIM_OK)
        rc = esim_store_iot_packages(r->st, NULL, uuid, IOT_MAX_EIDS, &p, &n, &e);
    if (rc == ESIM_OK && n == 0)
        rc = esim_fail(&e, ESIM_ENOTFOUND, "command %s is not an IoT package", uuid);
    if (rc != ESIM_OK) {
        esim_store_queue_entries_free(entries, ne);
        esim_store_iot_packages_free(p, n);
        api_error(r, api_status_for(rc), NULL, "%s", e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = package_json(&p[i]);
        for (size_t j = 0; j < ne; j++)
            if (strcmp(entries[j].udid, p[i].eid) == 0)
                json_object_set_new(o, "queue_state",
                                    json_string(esim_store_qstate_name(entries[j].state)));
        json_array_append_new(arr, o);
    }
    api_reply_json(r, 200,
                   json_pack("{s:s,s:s,s:s,s:o}", "command_uuid", info.uuid, "request_type",
                             info.request_type, "summary", p[0].summary, "devices", arr));
    esim_store_queue_entries_free(entries, ne);
    esim_store_iot_packages_free(p, n);
}

esim_err api_iot_routes(esim_service *svc, esim_error *err)
{
    /* The reads are store work only: on the store pool when there is one.
     * The registrations and packages (POST) are checked on the loop, then
     * written on a worker (api_store_job) and counted on the loop. */
    if (esim_service_add_store_route(svc, "GET", "/v1/iot/devices", h_get_devices, NULL) !=
            ESIM_OK ||
        esim_service_add_store_route(svc, "GET", "/v1/iot/devices/:", h_get_device, NULL) !=
            ESIM_OK ||
        esim_service_add_route(svc, "POST", "/v1/iot/devices", h_post_devices, NULL) != ESIM_OK ||
        esim_service_add_route(svc, "POST", "/v1/iot/packages", h_post_packages, NULL) != ESIM_OK ||
        esim_service_add_store_route(svc, "GET", "/v1/iot/packages/:", h_get_package, NULL) !=
            ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "cannot add the IoT API routes");
    return ESIM_OK;
}
