/*
 * api_windows.c — the admin API for Windows devices (docs/api.md,
 * "Windows devices"): queue raw SyncML commands, and the eSIM operations of
 * the eUICCs CSP (download servers, profiles, local UI policy, reset) with
 * their verification. Registered as routes of the service at start-up, so
 * the route table of api.c stays as it is.
 */
#include <stdlib.h>
#include <string.h>

#include "restrictions/restrictions.h"
#include "service/omadm.h"
#include "service/service_internal.h"

#define WIN_MAX_UDIDS 1000

/* The "udids" array of |body| into |list| (borrowed strings); false when
 * the request was answered with an error. */
static bool read_udids(api_request *r, json_t *body, const char ***list, size_t *n)
{
    json_t *udids = json_object_get(body, "udids");
    *n = json_array_size(udids);
    if (!json_is_array(udids) || *n == 0 || *n > WIN_MAX_UDIDS) {
        api_error(r, 400, "udids", "udids: must be an array of 1 to %d device UDIDs",
                  WIN_MAX_UDIDS);
        return false;
    }
    *list = calloc(*n, sizeof **list);
    if (!*list) {
        api_error(r, 500, NULL, "out of memory");
        return false;
    }
    for (size_t i = 0; i < *n; i++) {
        json_t *u = json_array_get(udids, i);
        esim_error e = {{0}};
        if (!json_is_string(u) || esim_udid_validate(json_string_value(u), &e) != ESIM_OK) {
            char field[32];
            snprintf(field, sizeof field, "udids[%zu]", i);
            api_error(r, 400, field, "%s: %s", field,
                      json_is_string(u) ? e.msg : "must be a string (a device UDID)");
            free(*list);
            *list = NULL;
            return false;
        }
        (*list)[i] = json_string_value(u);
    }
    return true;
}

static bool read_opts(api_request *r, json_t *body, esim_enqueue_opts *o)
{
    json_t *prio = json_object_get(body, "priority");
    json_t *exp = json_object_get(body, "expires_in_s");
    json_t *push = json_object_get(body, "push");
    if (prio && (!json_is_integer(prio) || json_integer_value(prio) < -1000 ||
                 json_integer_value(prio) > 1000)) {
        api_error(r, 400, "priority", "priority: must be an integer from -1000 to 1000");
        return false;
    }
    if (exp && (!json_is_integer(exp) || json_integer_value(exp) <= 0 ||
                json_integer_value(exp) > 10LL * 365 * 24 * 3600)) {
        api_error(r, 400, "expires_in_s", "expires_in_s: must be a positive number of seconds");
        return false;
    }
    if (push && !json_is_boolean(push)) {
        api_error(r, 400, "push", "push: must be true or false");
        return false;
    }
    o->priority = prio ? (int)json_integer_value(prio) : 0;
    o->expires_at = exp ? esim_now_ms() + json_integer_value(exp) * 1000 : 0;
    o->push = !push || json_is_true(push);
    return true;
}

static json_t *push_json(const char *const *udids, const esim_push_state *ps, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++)
        json_object_set_new(o, udids[i], json_pack("{s:s}", "push", esim_push_state_name(ps[i])));
    return o;
}

/* A POST's call: what the loop read from the request, what the worker
 * leaves (each queued command's outcome, the push targets). */
typedef struct {
    json_t *body; /* the request's JSON: the strings below point into it */
    const char **udids;
    size_t n, queued;
    esim_enqueue_opts o;
    esim_push_state *ps;
    push_read *targets; /* NULL: read on the loop (out of memory) */
    esim_err rc;
    bool failed; /* the store failed to queue (counted on the loop) */
    esim_error e;
    /* POST /v1/windows/commands */
    const char *uuid, *rt, *syncml;
    char out_uuid[128];
    /* POST /v1/windows/esim */
    esim_windows_op op;
    esim_activation_code code;
    const char *eid_given, *server, *iccid, *mid, *field;
    esim_buf *bodies;
    char (*uuids)[ESIM_UUID_LEN + 1];
} win_call;

static void win_call_free(win_call *c)
{
    for (size_t i = 0; c->bodies && i < c->n; i++)
        esim_buf_free(&c->bodies[i]);
    free(c->bodies);
    free(c->uuids);
    free(c->targets);
    free(c->ps);
    free(c->udids);
    json_decref(c->body);
    free(c);
}

static void post_commands_run(esim_api_request *r, void *arg)
{
    win_call *c = arg;
    c->rc = svc_syncml_enqueue_on(r->svc, r->st, c->uuid, c->rt, c->syncml, strlen(c->syncml),
                                  c->udids, c->n, &c->o, c->out_uuid, &c->failed, &c->e);
    if (c->rc == ESIM_OK && c->o.push)
        c->targets = push_read_targets(r->st, c->udids, c->n);
}

static void post_commands_then(esim_api_request *r, void *arg)
{
    win_call *c = arg;
    if (api_job_answered(r)) {
        win_call_free(c);
        return;
    }
    if (c->failed)
        svc_store_failed(r->svc, NULL);
    if (c->rc == ESIM_OK) {
        /* Counted, pushed, and put in the device's held answer if there is one. */
        svc_enqueue_after(r->svc, c->udids, c->n, &c->o, c->targets, c->ps);
        api_reply_json(r, 201,
                       json_pack("{s:s,s:o}", "command_uuid", c->out_uuid, "devices",
                                 push_json(c->udids, c->ps, c->n)));
    } else {
        api_error(r, api_status_for(c->rc), c->rc == ESIM_EINVAL ? "syncml" : NULL, "%s",
                  c->e.msg[0] ? c->e.msg : esim_strerror(c->rc));
    }
    win_call_free(c);
}

/* POST /v1/windows/commands {udids, syncml, request_type?, priority?, expires_in_s?, push?}:
 * checked here, queued on a store pool worker, pushed on the loop. */
static void h_post_commands(esim_api_request *r, void *arg)
{
    (void)arg;
    json_t *body = api_body_json(r);
    if (!body)
        return;
    const char *syncml = json_string_value(json_object_get(body, "syncml"));
    json_t *rt = json_object_get(body, "request_type");
    const char **udids = NULL;
    size_t n = 0;
    esim_enqueue_opts o = {0};
    if (!syncml) {
        api_error(r, 400, "syncml",
                  "syncml: the SyncML commands (Add, Replace, Get, Exec, "
                  "Delete, Atomic) with CmdID set to the command's uuid");
    } else if (rt && !json_is_string(rt)) {
        api_error(r, 400, "request_type", "request_type: must be a string");
    } else if (read_udids(r, body, &udids, &n) && read_opts(r, body, &o)) {
        win_call *c = calloc(1, sizeof *c);
        esim_push_state *ps = calloc(n, sizeof *ps);
        if (!c || !ps) {
            free(c);
            free(ps);
            api_error(r, api_status_for(ESIM_ENOMEM), NULL, "%s", esim_strerror(ESIM_ENOMEM));
        } else {
            c->body = body;
            c->udids = udids;
            c->n = n;
            c->o = o;
            c->ps = ps;
            c->syncml = syncml;
            c->rt = rt ? json_string_value(rt) : "SyncML";
            c->uuid = json_string_value(json_object_get(body, "uuid"));
            api_store_job(r, post_commands_run, post_commands_then, c);
            return;
        }
    }
    free(udids);
    json_decref(body);
}

/* ---- eSIM operations ---------------------------------------------------------------------- */

static const char *const op_request_types[ESIM_WIN_OP_COUNT] = {
    "eUICCs.AddServer",     "eUICCs.DeleteServer", "eUICCs.AddProfile", "eUICCs.EnableProfile",
    "eUICCs.DeleteProfile", "eUICCs.LocalUI",      "eUICCs.Reset",      "eUICCs.Get",
};

static bool get_tri(api_request *r, json_t *body, const char *key, esim_tri *out)
{
    json_t *v = json_object_get(body, key);
    *out = ESIM_TRI_UNSET;
    if (!v)
        return true;
    if (!json_is_boolean(v)) {
        api_error(r, 400, key, "%s: must be true or false", key);
        return false;
    }
    *out = json_is_true(v) ? ESIM_TRI_TRUE : ESIM_TRI_FALSE;
    return true;
}

/* On a store pool worker: every device's command first (nothing queued if
 * one is wrong), then queued, one command per device, and the push
 * targets of those queued read. */
static void post_esim_run(esim_api_request *r, void *arg)
{
    win_call *c = arg;
    esim_windows_op op = c->op;
    const esim_activation_code *code = &c->code;
    esim_error *e = &c->e;
    esim_err rc = ESIM_OK;
    for (size_t i = 0; rc == ESIM_OK && i < c->n; i++) {
        store_device d;
        rc = esim_store_device_get(r->st, c->udids[i], &d, e);
        if (rc == ESIM_OK && strcmp(d.platform, "windows") != 0)
            rc = esim_fail(e, ESIM_EINVAL, "device %s is not a Windows device", c->udids[i]);
        const char *eid = c->eid_given ? c->eid_given : d.eid;
        if (rc == ESIM_OK && !eid[0])
            rc = esim_fail(e, ESIM_EINVAL,
                           "device %s has not reported its EID yet: give eid, or wait for its "
                           "next session",
                           c->udids[i]);
        /* The activation-code import feeds the profile: server, MatchingID
         * and ICCID of the code imported for this EID. */
        char iccid_buf[21] = "", mid_buf[256] = "";
        op.eid = eid;
        op.server = c->server ? c->server : code->smdp_address[0] ? code->smdp_address : NULL;
        op.matching_id = c->mid ? c->mid : code->matching_id[0] ? code->matching_id : NULL;
        op.iccid = c->iccid;
        if (rc == ESIM_OK && op.kind == ESIM_WIN_ADD_PROFILE && (!op.matching_id || !op.iccid) &&
            esim_store_code_for_eid(r->st, eid, iccid_buf, mid_buf, NULL) == ESIM_OK) {
            if (!op.matching_id && mid_buf[0])
                op.matching_id = mid_buf;
            if (!op.iccid && iccid_buf[0])
                op.iccid = iccid_buf;
        }
        if (rc == ESIM_OK) {
            esim_uuid_new(c->uuids[i]);
            rc = esim_windows_op_syncml(&op, c->uuids[i], &c->bodies[i], e);
            if (rc == ESIM_EINVAL)
                c->field = strstr(e->msg, "MatchingID") ? "matching_id"
                           : strstr(e->msg, "ICCID")    ? "iccid"
                           : strstr(e->msg, "server")   ? "server"
                           : strstr(e->msg, "EID")      ? "eid"
                                                        : NULL;
        }
    }
    for (size_t i = 0; rc == ESIM_OK && i < c->n; i++) {
        bool failed = false;
        rc = svc_syncml_enqueue_on(r->svc, r->st, c->uuids[i], op_request_types[op.kind],
                                   (const char *)c->bodies[i].data, c->bodies[i].len, &c->udids[i],
                                   1, &c->o, NULL, &failed, e);
        c->failed |= failed;
        if (rc == ESIM_OK)
            c->queued++;
    }
    c->rc = rc;
    if (c->queued && c->o.push)
        c->targets = push_read_targets(r->st, c->udids, c->queued);
}

/* On the loop: each queued command counted and pushed, then the answer. */
static void post_esim_then(esim_api_request *r, void *arg)
{
    win_call *c = arg;
    if (api_job_answered(r)) {
        win_call_free(c);
        return;
    }
    json_t *cmds = json_array();
    for (size_t i = 0; i < c->queued; i++) {
        esim_push_state ps = ESIM_PUSH_SKIPPED;
        svc_enqueue_after(r->svc, &c->udids[i], 1, &c->o, c->targets ? &c->targets[i] : NULL, &ps);
        json_array_append_new(cmds, json_pack("{s:s,s:s,s:s}", "udid", c->udids[i], "command_uuid",
                                              c->uuids[i], "push", esim_push_state_name(ps)));
    }
    if (c->failed)
        svc_store_failed(r->svc, NULL);
    if (c->rc == ESIM_OK)
        api_reply_json(r, 201,
                       json_pack("{s:s,s:o}", "operation", esim_windows_op_name(c->op.kind),
                                 "commands", cmds));
    else {
        json_decref(cmds);
        api_error(r, api_status_for(c->rc), c->field, "%s",
                  c->e.msg[0] ? c->e.msg : esim_strerror(c->rc));
    }
    win_call_free(c);
}

/* POST /v1/windows/esim {udids, operation, eid?, server?, auto_enable?,
 * discovery?, iccid?, matching_id?, activation_code?, enabled?,
 * local_ui_enabled?, push?}: one command per device (its paths name the
 * device's eUICC), validated before anything is queued. */
static void h_post_esim(esim_api_request *r, void *arg)
{
    (void)arg;
    json_t *body = api_body_json(r);
    if (!body)
        return;
    const char **udids = NULL;
    size_t n = 0;
    esim_enqueue_opts o = {0};
    const char *opname = json_string_value(json_object_get(body, "operation"));
    esim_windows_op op = {0};
    int kind = -1;
    for (int k = 0; opname && k < ESIM_WIN_GET; k++)
        if (strcmp(opname, esim_windows_op_name((esim_windows_op_kind)k)) == 0)
            kind = k;
    if (kind < 0) {
        api_error(r, 400, "operation",
                  "operation: one of add_server, delete_server, add_profile, enable_profile, "
                  "delete_profile, local_ui, reset");
        json_decref(body);
        return;
    }
    op.kind = (esim_windows_op_kind)kind;
    esim_tri auto_enable = ESIM_TRI_UNSET, local_ui = ESIM_TRI_UNSET;
    if (!read_udids(r, body, &udids, &n) || !read_opts(r, body, &o) ||
        !get_tri(r, body, "auto_enable", &auto_enable) ||
        !get_tri(r, body, "discovery", &op.discovery) ||
        !get_tri(r, body, "enabled", &op.enabled) ||
        !get_tri(r, body, "local_ui_enabled", &local_ui)) {
        free(udids);
        json_decref(body);
        return;
    }
    op.auto_enable = auto_enable == ESIM_TRI_TRUE;
    op.local_ui_enabled = local_ui != ESIM_TRI_FALSE;
    if (op.kind == ESIM_WIN_LOCAL_UI && local_ui == ESIM_TRI_UNSET) {
        api_error(r, 400, "local_ui_enabled", "local_ui_enabled: true or false is required");
        free(udids);
        json_decref(body);
        return;
    }
    const char *eid_given = json_string_value(json_object_get(body, "eid"));
    const char *server = json_string_value(json_object_get(body, "server"));
    const char *iccid = json_string_value(json_object_get(body, "iccid"));
    const char *mid = json_string_value(json_object_get(body, "matching_id"));
    const char *ac = json_string_value(json_object_get(body, "activation_code"));
    esim_activation_code code = {0};
    esim_error e = {{0}};
    if (ac && esim_activation_code_parse(ac, &code, &e) != ESIM_OK) {
        api_error(r, 400, "activation_code", "activation_code: %s", e.msg);
        free(udids);
        json_decref(body);
        return;
    }
    if (eid_given && n > 1) {
        api_error(r, 400, "eid", "eid: give it for one device only (each device has its own)");
        free(udids);
        json_decref(body);
        return;
    }
    win_call *c = calloc(1, sizeof *c);
    if (c) {
        c->bodies = calloc(n, sizeof *c->bodies);
        c->uuids = calloc(n, sizeof *c->uuids);
        c->ps = calloc(n, sizeof *c->ps);
    }
    if (!c || !c->bodies || !c->uuids || !c->ps) {
        if (c)
            win_call_free(c);
        api_error(r, api_status_for(ESIM_ENOMEM), NULL, "%s", esim_strerror(ESIM_ENOMEM));
        free(udids);
        json_decref(body);
        return;
    }
    c->body = body;
    c->udids = udids;
    c->n = n;
    c->o = o;
    c->op = op;
    c->code = code;
    c->eid_given = eid_given;
    c->server = server;
    c->iccid = iccid;
    c->mid = mid;
    api_store_job(r, post_esim_run, post_esim_then, c);
}

/* The newest "verify" ledger event of |udid| for |uuid|, copied into |out|
 * ("" when none). */
static esim_err latest_verify(store *st, const char *udid, const char *uuid, char *out,
                              size_t out_len)
{
    out[0] = '\0';
    int64_t after = 0;
    for (;;) {
        store_event *ev = NULL;
        size_t n = 0;
        esim_err rc = esim_store_events_list(st, udid, after, 500, &ev, &n, NULL);
        if (rc != ESIM_OK)
            return rc;
        for (size_t i = 0; i < n; i++)
            if (strcmp(ev[i].kind, "verify") == 0 && strcmp(ev[i].command_uuid, uuid) == 0)
                snprintf(out, out_len, "%s", ev[i].detail);
        if (n)
            after = ev[n - 1].id;
        esim_store_events_free(ev, n);
        if (n < 500)
            return ESIM_OK;
    }
}

/* GET /v1/windows/esim/:uuid — the operation on each device: the queue
 * state, every item's status, and what verification found
 * ("pending: ...", "done: ...", "failed: ...", "timeout: ..."). */
static void h_get_esim(esim_api_request *r, void *arg)
{
    (void)arg;
    const char *uuid = esim_api_param(r, 0);
    store_command_info info;
    store_queue_entry *entries = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc = esim_store_command_get(r->st, uuid, NULL, 1000, &info, &entries, &n, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), NULL, "%s", e.msg);
        return;
    }
    json_t *devs = json_array();
    for (size_t i = 0; i < n; i++) {
        char v[600];
        if (latest_verify(r->st, entries[i].udid, uuid, v, sizeof v) != ESIM_OK) {
            json_decref(devs);
            esim_store_queue_entries_free(entries, n);
            api_error(r, 500, NULL, "the store failed");
            return;
        }
        const char *verdict = !v[0]                           ? NULL
                              : strncmp(v, "done", 4) == 0    ? "done"
                              : strncmp(v, "failed", 6) == 0  ? "failed"
                              : strncmp(v, "timeout", 7) == 0 ? "timeout"
                                                              : "pending";
        json_t *chain =
            entries[i].error_chain_json ? json_loads(entries[i].error_chain_json, 0, NULL) : NULL;
        json_t *items = json_object_get(chain, "syncml");
        json_array_append_new(devs,
                              json_pack("{s:s,s:s,s:o,s:o,s:o}", "udid", entries[i].udid, "state",
                                        esim_store_qstate_name(entries[i].state), "syncml",
                                        items ? json_incref(items) : json_array(), "verification",
                                        verdict ? json_string(verdict) : json_null(), "detail",
                                        v[0] ? json_string(v) : json_null()));
        json_decref(chain);
    }
    esim_store_queue_entries_free(entries, n);
    api_reply_json(r, 200,
                   json_pack("{s:s,s:s,s:o}", "command_uuid", info.uuid, "request_type",
                             info.request_type, "devices", devs));
}

esim_err api_windows_routes(esim_service *svc, esim_error *err)
{
    /* The read is store work only: on the store pool when there is one. The
     * POSTs are checked on the loop, queued on a worker (api_store_job),
     * counted and pushed on the loop. */
    if (esim_service_add_store_route(svc, "GET", "/v1/windows/esim/:", h_get_esim, NULL) != ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "cannot add the Windows API routes");
    if (esim_service_add_route(svc, "POST", "/v1/windows/commands", h_post_commands, NULL) !=
            ESIM_OK ||
        esim_service_add_route(svc, "POST", "/v1/windows/esim", h_post_esim, NULL) != ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "cannot add the Windows API routes");
    return ESIM_OK;
}
