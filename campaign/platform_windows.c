/*
 * platform_windows.c — the Windows adapter of the platform seam
 * (platform.h): steps become eUICCs CSP SyncML (restrictions/windows_csp.c
 * writes it) under the eUICC named by the device's EID, one command per
 * device; answers are the per-item statuses and Results the service hands
 * the result hooks (esim_service_result.syncml).
 *
 *   profile   Replace Policies/LocalUIEnabled (false when the policy denies
 *             eSIM modification)
 *   refresh   Add DownloadServers/{SM-DP+ FQDN} with AutoEnable true: the
 *             PC asks the SM-DP+ what is released for its EID and enables
 *             it, as RefreshCellularPlans does on an iPhone
 *   verify    Get Profiles (the ICCIDs), the expected profile's State and
 *             ErrorDetail, and the server's DiscoveryState
 *   esim_wipe Exec Actions/ResetToFactoryState
 *   erase_keep has no eUICCs CSP form: refused
 * A 200 on Add only means accepted: the verify step reads State = 2
 * (installed); State 1 or a discovery still running is "busy, try later";
 * State 4 is an error with its ErrorDetail in words.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "campaign/platform.h"
#include "restrictions/restrictions.h"

typedef struct {
    char server[256];   /* the SM-DP+ FQDN of the campaign's URL */
    bool local_ui_open; /* LocalUIEnabled for the profile step */
} windows_ctx;

static esim_err win_prepare(const campaign_spec *spec, void **out, esim_error *err)
{
    windows_ctx *x = calloc(1, sizeof *x);
    if (!x)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    campaign_platform_host_of(spec->smdp_url, x->server, sizeof x->server);
    x->local_ui_open = spec->policy.allow_esim_modification != ESIM_TRI_FALSE;
    *out = x;
    return ESIM_OK;
}

static void win_release(void *ctx)
{
    free(ctx);
}

static size_t win_memory(const void *ctx)
{
    (void)ctx;
    return sizeof(windows_ctx);
}

static esim_err win_build(void *ctx, const campaign_order *o, const char *uuid,
                          campaign_command *out, esim_error *err)
{
    windows_ctx *x = ctx;
    char fresh[ESIM_UUID_LEN + 1], server[256];
    if (!uuid) {
        esim_uuid_new(fresh);
        uuid = fresh;
    }
    if (!o->eid || !*o->eid)
        return esim_fail(err, ESIM_EINVAL,
                         "the PC has not reported its EID yet: its eUICC cannot be named");
    campaign_platform_host_of(o->smdp_url, server, sizeof server);
    if (!server[0])
        snprintf(server, sizeof server, "%s", x->server);
    esim_windows_op op = {.eid = o->eid};
    const char *kind = NULL;
    char nodes[4][300];
    const char *np[4] = {nodes[0], nodes[1], nodes[2], nodes[3]};
    switch (o->step) {
    case CAMPAIGN_STEP_PROFILE:
        op.kind = ESIM_WIN_LOCAL_UI;
        op.local_ui_enabled = x->local_ui_open;
        kind = "eUICCs.Campaign.LocalUI";
        break;
    case CAMPAIGN_STEP_REFRESH:
        op.kind = ESIM_WIN_ADD_SERVER;
        op.server = server;
        op.auto_enable = true;
        kind = "eUICCs.Campaign.AddServer";
        break;
    case CAMPAIGN_STEP_VERIFY:
        op.kind = ESIM_WIN_GET;
        snprintf(nodes[0], sizeof nodes[0], "Profiles");
        op.n_nodes = 1;
        if (o->iccid && *o->iccid) {
            snprintf(nodes[1], sizeof nodes[1], "Profiles/%s/State", o->iccid);
            snprintf(nodes[2], sizeof nodes[2], "Profiles/%s/ErrorDetail", o->iccid);
            op.n_nodes = 3;
            /* The profile node appears only when discovery found it: a
             * discovery that failed (nothing released for the EID) is read
             * from the server's node, or the device would look merely
             * "not there yet" until the verification gives up. */
            if (server[0]) {
                snprintf(nodes[3], sizeof nodes[3], "DownloadServers/%s/DiscoveryState", server);
                op.n_nodes = 4;
            }
        } else if (server[0]) {
            snprintf(nodes[1], sizeof nodes[1], "DownloadServers/%s/DiscoveryState", server);
            op.n_nodes = 2;
        }
        op.nodes = np;
        kind = "eUICCs.Campaign.Verify";
        break;
    case CAMPAIGN_STEP_ESIM_WIPE:
        op.kind = ESIM_WIN_RESET;
        kind = "eUICCs.Campaign.Reset";
        break;
    case CAMPAIGN_STEP_ERASE_KEEP:
        return esim_fail(err, ESIM_EINVAL,
                         "erasing a PC while keeping its eSIM has no eUICCs CSP command");
    default:
        return esim_fail(err, ESIM_EINVAL, "unknown step");
    }
    memset(out, 0, sizeof *out);
    esim_err rc = esim_windows_op_syncml(&op, uuid, &out->body, err);
    if (rc != ESIM_OK)
        return rc;
    snprintf(out->uuid, sizeof out->uuid, "%s", uuid);
    snprintf(out->kind, sizeof out->kind, "%s", kind);
    return ESIM_OK;
}

static esim_err win_enqueue(const esim_service *svc, store *st, const campaign_command *cmd,
                            const char *const *udids, size_t n, esim_error *err)
{
    esim_enqueue_opts opts = {0};
    return esim_service_enqueue_syncml_on(svc, st, cmd->uuid, cmd->kind,
                                          (const char *)cmd->body.data, cmd->body.len, udids, n,
                                          &opts, err);
}

/* The item whose LocURI ends with |leaf|. */
static const esim_syncml_status *item_for(const esim_service_result *r, const char *leaf)
{
    size_t ll = strlen(leaf);
    for (size_t i = 0; i < r->n_syncml; i++) {
        const char *t = r->syncml[i].target;
        size_t tl = strlen(t);
        if (tl >= ll && strcmp(t + tl - ll, leaf) == 0)
            return &r->syncml[i];
    }
    return NULL;
}

campaign_windows_verdict campaign_windows_verdict_of(long state, long discovery_state)
{
    if (state == 4)
        return CAMPAIGN_WINDOWS_PROFILE_ERROR;
    if (state == 1 || state == 3 || (state != 2 && (discovery_state == 1 || discovery_state == 2)))
        return CAMPAIGN_WINDOWS_BUSY;
    if (discovery_state == 4 && state != 2)
        return CAMPAIGN_WINDOWS_DISCOVERY_FAILED;
    return CAMPAIGN_WINDOWS_SETTLED;
}

/* The ICCIDs a Get of Profiles listed, as (EID, ICCID) pairs; only those
 * installed when the State of the expected one was read. */
static void read_profiles(const esim_service_result *r, const char *eid, campaign_reading *out)
{
    const esim_syncml_status *list = item_for(r, "/Profiles");
    if (!list || list->code != 200 || !list->data || !eid)
        return;
    size_t cap = 1;
    for (const char *c = list->data; *c; c++)
        cap += *c == '/';
    out->subs = calloc(cap, sizeof *out->subs);
    if (!out->subs)
        return;
    const char *p = list->data;
    while (*p && out->n_subs < cap) {
        size_t l = strcspn(p, "/");
        if (l > 0 && l < sizeof out->subs[0].iccid) {
            esim_subscription *s = &out->subs[out->n_subs++];
            snprintf(s->eid, sizeof s->eid, "%s", eid);
            memcpy(s->iccid, p, l);
            s->iccid[l] = '\0';
        }
        p += l;
        if (*p == '/')
            p++;
    }
}

static esim_err win_read(campaign_step step, const esim_service_result *r, campaign_reading *out)
{
    memset(out, 0, sizeof *out);
    out->supervised = -1;
    if (!r || r->msg || !r->platform || strcmp(r->platform, "windows") != 0)
        return ESIM_EINVAL;
    bool ok = r->status && strcmp(r->status, "Acknowledged") == 0;
    out->result.status = ok                                              ? ESIM_STATUS_ACKNOWLEDGED
                         : r->status && strcmp(r->status, "NotNow") == 0 ? ESIM_STATUS_NOT_NOW
                         : r->status && !strcmp(r->status, "CommandFormatError")
                             ? ESIM_STATUS_COMMAND_FORMAT_ERROR
                             : ESIM_STATUS_ERROR;
    if (step == CAMPAIGN_STEP_VERIFY) {
        /* The Get of a missing node answers 404 and the command is an
         * "error" for the queue; for verification it is a reading. */
        const esim_syncml_status *st = item_for(r, "/State");
        const esim_syncml_status *ed = item_for(r, "/ErrorDetail");
        const esim_syncml_status *ds = item_for(r, "/DiscoveryState");
        const esim_syncml_status *pr = item_for(r, "/Profiles");
        const char *eid = NULL;
        char eid_buf[ESIM_EID_LEN + 1] = "";
        /* ./Device/Vendor/MSFT/eUICCs/{EID}/Profiles */
        if (pr) {
            const char *t = strstr(pr->target, "eUICCs/");
            if (t && strlen(t + 7) > ESIM_EID_LEN) {
                memcpy(eid_buf, t + 7, ESIM_EID_LEN);
                eid = eid_buf;
            }
        }
        out->result.status = ESIM_STATUS_ACKNOWLEDGED;
        long state = st && st->code == 200 && st->data ? strtol(st->data, NULL, 10) : 0;
        long dstate = ds && ds->code == 200 && ds->data ? strtol(ds->data, NULL, 10) : 0;
        campaign_windows_verdict v = campaign_windows_verdict_of(state, dstate);
        if (v == CAMPAIGN_WINDOWS_PROFILE_ERROR) {
            long code = ed && ed->data ? strtol(ed->data, NULL, 10) : -1;
            out->result.status = ESIM_STATUS_ERROR;
            out->result.error_code = code;
            snprintf(out->error_text, sizeof out->error_text,
                     "the profile is in State 4 (Error), ErrorDetail %ld %s", code,
                     esim_windows_error_detail_name(code));
            out->result.error_text = out->error_text;
        } else if (v == CAMPAIGN_WINDOWS_BUSY) {
            /* Still downloading, or discovery still running: later. */
            out->result.status = ESIM_STATUS_ERROR;
            out->result.busy = true;
            snprintf(out->error_text, sizeof out->error_text, "%s",
                     state == 1   ? "the profile is still installing (State 1)"
                     : state == 3 ? "the profile is being deleted (State 3)"
                                  : "discovery at the SM-DP+ is still running");
            out->result.error_text = out->error_text;
        } else if (v == CAMPAIGN_WINDOWS_DISCOVERY_FAILED) {
            out->result.status = ESIM_STATUS_ERROR;
            out->result.error_code = 4;
            snprintf(out->error_text, sizeof out->error_text,
                     "discovery at the SM-DP+ failed (DiscoveryState 4): nothing released for "
                     "this EID, or the server unreachable");
            out->result.error_text = out->error_text;
        } else if (!st || state == 2) {
            read_profiles(r, eid, out);
            if (st && state == 2 && out->n_subs == 0 && eid) {
                /* State says installed even if the list was not read. */
                out->subs = calloc(1, sizeof *out->subs);
                if (out->subs) {
                    out->n_subs = 1;
                    snprintf(out->subs[0].eid, sizeof out->subs[0].eid, "%s", eid);
                    const char *t = strstr(st->target, "Profiles/");
                    if (t)
                        snprintf(out->subs[0].iccid, sizeof out->subs[0].iccid, "%.*s",
                                 (int)strcspn(t + 9, "/"), t + 9);
                }
            }
            out->result.subs = out->subs;
            out->result.n_subs = out->n_subs;
        }
        return ESIM_OK;
    }
    if (!ok) {
        const esim_syncml_status *bad = NULL;
        for (size_t i = 0; i < r->n_syncml && !bad; i++)
            if (r->syncml[i].code < 200 || r->syncml[i].code > 299)
                bad = &r->syncml[i];
        if (bad) {
            out->result.error_code = bad->code;
            snprintf(out->error_text, sizeof out->error_text, "%s %s answered %d%s%s%s", bad->cmd,
                     bad->target, bad->code,
                     bad->code == 405   ? " (not allowed on this node)"
                     : bad->code == 404 ? " (no such node)"
                     : bad->code == 418 ? " (already exists)"
                                        : "",
                     bad->hresult[0] ? ", HRESULT " : "", bad->hresult);
            out->result.error_text = out->error_text;
            /* The server node is there already: a re-delivered Add; the
             * verify step says what became of it. */
            if (step == CAMPAIGN_STEP_REFRESH && bad->code == 418)
                out->result.status = ESIM_STATUS_ACKNOWLEDGED;
        }
    }
    return ESIM_OK;
}

/* The service keeps a PC's answer as its items ({"syncml": [{"cmd_ref",
 * "cmd", "target", "code", "hresult", "data"}...]}, service/omadm.c) with
 * the queue entry: the same items its result hook carried. */
static const char *json_text(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static esim_err win_read_recorded(store *st, campaign_step step, const store_queue_entry *q,
                                  campaign_reading *out)
{
    (void)st;
    memset(out, 0, sizeof *out);
    out->supervised = -1;
    json_t *j = q->error_chain_json ? json_loads(q->error_chain_json, 0, NULL) : NULL;
    json_t *arr = json_object_get(j, "syncml");
    if (!json_is_array(arr)) {
        json_decref(j);
        return ESIM_ENOTFOUND;
    }
    size_t n = json_array_size(arr);
    esim_syncml_status *items = calloc(n + 1, sizeof *items);
    if (!items) {
        json_decref(j);
        return ESIM_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        items[i] = (esim_syncml_status){
            .cmd_ref = json_text(o, "cmd_ref"),
            .cmd = json_text(o, "cmd"),
            .target = json_text(o, "target"),
            .code = (int)json_integer_value(json_object_get(o, "code")),
            .hresult = json_text(o, "hresult"),
            .data = json_string_value(json_object_get(o, "data")),
        };
    }
    esim_service_result r = {
        .udid = q->udid,
        .command_uuid = q->command_uuid,
        .status = q->state == STORE_Q_ACKNOWLEDGED   ? "Acknowledged"
                  : q->state == STORE_Q_FORMAT_ERROR ? "CommandFormatError"
                                                     : "Error",
        .platform = "windows",
        .syncml = items,
        .n_syncml = n,
    };
    esim_err rc = win_read(step, &r, out);
    free(items);
    json_decref(j);
    return rc;
}

const campaign_platform campaign_platform_windows = {
    .name = "windows",
    .per_device_commands = true,
    .prepare = win_prepare,
    .release = win_release,
    .memory = win_memory,
    .build = win_build,
    .enqueue = win_enqueue,
    .read = win_read,
    .read_recorded = win_read_recorded,
};
