/*
 * platform_iot.c — the IoT adapter of the platform seam (platform.h):
 * steps become eIM packages (esim_service_enqueue_iot_on, docs/iot.md) for
 * the device's eUICC, one per device; answers are the package results in
 * words the service hands the result hooks (esim_service_result.iot_result).
 *
 *   refresh   a profile download trigger with the activation code
 *             1$SMDP (the SM-DP+ of the campaign, no MatchingID: the
 *             SM-DP+ hands what it released for the EID, as
 *             RefreshCellularPlans does on an iPhone)
 *   verify    PSMOs: enable the expected profile (when its ICCID is known)
 *             and list the profiles; verified when the expected ICCID is
 *             listed enabled
 *   profile, erase_keep, esim_wipe   no SGP.32 v1.0 package: refused
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "campaign/platform.h"

typedef struct {
    char smdp[256]; /* the SM-DP+ address of the campaign's URL (host[:port]) */
} iot_ctx;

static esim_err iot_prepare(const campaign_spec *spec, void **out, esim_error *err)
{
    iot_ctx *x = calloc(1, sizeof *x);
    if (!x)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    campaign_platform_host_of(spec->smdp_url, x->smdp, sizeof x->smdp);
    *out = x;
    return ESIM_OK;
}

static void iot_release(void *ctx)
{
    free(ctx);
}

static size_t iot_memory(const void *ctx)
{
    (void)ctx;
    return sizeof(iot_ctx);
}

static esim_err iot_build(void *ctx, const campaign_order *o, const char *uuid,
                          campaign_command *out, esim_error *err)
{
    iot_ctx *x = ctx;
    char fresh[ESIM_UUID_LEN + 1], smdp[256];
    if (!uuid) {
        esim_uuid_new(fresh);
        uuid = fresh;
    }
    campaign_platform_host_of(o->smdp_url, smdp, sizeof smdp);
    if (!smdp[0])
        snprintf(smdp, sizeof smdp, "%s", x->smdp);
    json_t *pkg = NULL;
    const char *kind = NULL;
    switch (o->step) {
    case CAMPAIGN_STEP_REFRESH: {
        char code[300];
        snprintf(code, sizeof code, "1$%s", smdp);
        pkg = json_pack("{s:{s:s}}", "download", "activation_code", code);
        kind = "ProfileDownloadTrigger";
        break;
    }
    case CAMPAIGN_STEP_VERIFY: {
        json_t *ops = json_array();
        if (o->iccid && *o->iccid)
            json_array_append_new(ops, json_pack("{s:s,s:s}", "op", "enable", "iccid", o->iccid));
        json_array_append_new(ops, json_pack("{s:s}", "op", "list_profiles"));
        pkg = json_pack("{s:o}", "operations", ops);
        kind = "EuiccPackage.PSMO";
        break;
    }
    case CAMPAIGN_STEP_PROFILE:
        return esim_fail(err, ESIM_EINVAL,
                         "an IoT eUICC has no eSIM policy to apply: leave the profile step out "
                         "for IoT devices");
    case CAMPAIGN_STEP_ERASE_KEEP:
    case CAMPAIGN_STEP_ESIM_WIPE:
        return esim_fail(err, ESIM_EINVAL,
                         "erasing an IoT device or resetting its eUICC has no SGP.32 package");
    default:
        return esim_fail(err, ESIM_EINVAL, "unknown step");
    }
    char *text = pkg ? json_dumps(pkg, JSON_COMPACT) : NULL;
    json_decref(pkg);
    if (!text)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    memset(out, 0, sizeof *out);
    esim_err rc = esim_buf_append(&out->body, text, strlen(text));
    free(text);
    if (rc != ESIM_OK)
        return esim_fail(err, rc, "out of memory");
    snprintf(out->uuid, sizeof out->uuid, "%s", uuid);
    snprintf(out->kind, sizeof out->kind, "%s", kind);
    return ESIM_OK;
}

static esim_err iot_enqueue(const esim_service *svc, store *st, const campaign_command *cmd,
                            const char *const *udids, size_t n, esim_error *err)
{
    /* The body is NUL-free JSON built above; the service reads a string. */
    char *text = malloc(cmd->body.len + 1);
    if (!text)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    memcpy(text, cmd->body.data, cmd->body.len);
    text[cmd->body.len] = '\0';
    esim_enqueue_opts opts = {0};
    esim_err rc = esim_service_enqueue_iot_on(svc, st, cmd->uuid, text, udids, n, &opts, err);
    free(text);
    return rc;
}

/* The profiles a list_profiles result names enabled, as (EID, ICCID). */
static void read_profiles(const json_t *res, const char *eid, campaign_reading *out)
{
    const json_t *profiles = json_object_get(res, "profiles");
    size_t n = json_array_size(profiles);
    if (n == 0 || !eid)
        return;
    out->subs = calloc(n, sizeof *out->subs);
    if (!out->subs)
        return;
    for (size_t i = 0; i < n; i++) {
        const json_t *p = json_array_get(profiles, i);
        const char *iccid = json_string_value(json_object_get(p, "iccid"));
        const char *state = json_string_value(json_object_get(p, "state"));
        if (!iccid || !state || strcmp(state, "enabled") != 0)
            continue;
        esim_subscription *s = &out->subs[out->n_subs++];
        snprintf(s->eid, sizeof s->eid, "%s", eid);
        snprintf(s->iccid, sizeof s->iccid, "%s", iccid);
    }
}

static esim_err iot_read(campaign_step step, const esim_service_result *r, campaign_reading *out)
{
    memset(out, 0, sizeof *out);
    out->supervised = -1;
    if (!r || r->msg || !r->platform || strcmp(r->platform, "iot") != 0 || !r->iot_result)
        return ESIM_EINVAL;
    json_t *res = json_loads(r->iot_result, 0, NULL);
    if (!res)
        return ESIM_EINVAL;
    bool ok = r->status && strcmp(r->status, "Acknowledged") == 0;
    const char *state = json_string_value(json_object_get(res, "state"));
    const char *words = json_string_value(json_object_get(res, "words"));
    out->result.status = ok ? ESIM_STATUS_ACKNOWLEDGED : ESIM_STATUS_ERROR;
    if (step == CAMPAIGN_STEP_VERIFY && json_object_get(res, "profiles") && state &&
        (strcmp(state, "done") == 0 || strcmp(state, "failed") == 0)) {
        /* A verified list is the reading, whatever the enable said (it
         * says profileNotInDisabledState when the profile is enabled
         * already). */
        out->result.status = ESIM_STATUS_ACKNOWLEDGED;
        read_profiles(res, r->udid, out);
        out->result.subs = out->subs;
        out->result.n_subs = out->n_subs;
    } else if (!ok) {
        json_t *code = json_object_get(res, "code");
        out->result.error_code = json_is_integer(code) ? json_integer_value(code) : -1;
        snprintf(out->error_text, sizeof out->error_text, "%s: %s", state ? state : "error",
                 words ? words : "the eUICC refused the package");
        out->result.error_text = out->error_text;
    }
    json_decref(res);
    return ESIM_OK;
}

/* The eIM keeps a result in words with its package (the queue entry holds
 * the DER the IPA sent). */
static esim_err iot_read_recorded(store *st, campaign_step step, const store_queue_entry *q,
                                  campaign_reading *out)
{
    memset(out, 0, sizeof *out);
    out->supervised = -1;
    store_iot_package *p = NULL;
    size_t n = 0;
    if (esim_store_iot_packages(st, q->udid, q->command_uuid, 1, &p, &n, NULL) != ESIM_OK)
        return ESIM_ENOTFOUND;
    esim_err rc = ESIM_ENOTFOUND;
    if (n == 1 && p[0].result_words) {
        esim_service_result r = {
            .udid = q->udid,
            .command_uuid = q->command_uuid,
            .status = q->state == STORE_Q_ACKNOWLEDGED ? "Acknowledged" : "Error",
            .platform = "iot",
            .iot_result = p[0].result_words,
        };
        rc = iot_read(step, &r, out);
    }
    esim_store_iot_packages_free(p, n);
    return rc;
}

const campaign_platform campaign_platform_iot = {
    .name = "iot",
    .per_device_commands = true,
    .prepare = iot_prepare,
    .release = iot_release,
    .memory = iot_memory,
    .build = iot_build,
    .enqueue = iot_enqueue,
    .read = iot_read,
    .read_recorded = iot_read_recorded,
};
