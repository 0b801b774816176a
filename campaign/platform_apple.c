/*
 * platform_apple.c — the Apple adapter of the platform seam (platform.h):
 * steps become MDM commands (InstallProfile with the eSIM restrictions,
 * RefreshCellularPlans, DeviceInformation, EraseDevice), one command for a
 * whole batch; answers are read from the device's plist: status, the
 * ErrorChain (the first entry's code, 36003 "busy" and a NSURLErrorDomain cause
 * — the SM-DP+ unreachable — are retried; every
 * entry's text), ServiceSubscriptions for verification, IsSupervised and
 * OSVersion.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "campaign/platform.h"

typedef struct {
    esim_buf profile; /* the restrictions profile of CAMPAIGN_STEP_PROFILE */
    char smdp_url[ESIM_SERVER_URL_MAX + 1];
} apple_ctx;

static esim_err apple_prepare(const campaign_spec *spec, void **out, esim_error *err)
{
    apple_ctx *x = calloc(1, sizeof *x);
    if (!x)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (spec->smdp_url)
        snprintf(x->smdp_url, sizeof x->smdp_url, "%s", spec->smdp_url);
    if (spec->steps[CAMPAIGN_STEP_PROFILE]) {
        esim_profile_opts po = {.identifier = ESIM_POLICY_DEFAULT_IDENTIFIER,
                                .display_name = "eSIM restrictions"};
        esim_err rc = esim_policy_to_profile(&spec->policy, &po, NULL, &x->profile, err);
        if (rc != ESIM_OK) {
            free(x);
            return rc;
        }
    }
    *out = x;
    return ESIM_OK;
}

static void apple_release(void *ctx)
{
    apple_ctx *x = ctx;
    if (!x)
        return;
    esim_buf_free(&x->profile);
    free(x);
}

static size_t apple_memory(const void *ctx)
{
    const apple_ctx *x = ctx;
    return sizeof *x + x->profile.cap;
}

static esim_err apple_build(void *ctx, const campaign_order *o, const char *uuid,
                            campaign_command *out, esim_error *err)
{
    apple_ctx *x = ctx;
    esim_cmd_opts opts = {.command_uuid = uuid};
    static const char *const queries[] = {"ServiceSubscriptions", "IsSupervised", "OSVersion"};
    esim_erase_opts erase = {0};
    esim_cmd cmd = {0};
    esim_err rc;
    switch (o->step) {
    case CAMPAIGN_STEP_PROFILE:
        rc = esim_cmd_install_profile(x->profile.data, x->profile.len, &opts, &cmd, err);
        break;
    case CAMPAIGN_STEP_REFRESH:
        /* The device asks the SM-DP+ for what is released for its EID: the
         * expected EID/ICCID are checked by the verify step, not sent. */
        rc = esim_cmd_refresh_plans(o->smdp_url ? o->smdp_url : x->smdp_url, &opts, &cmd, err);
        break;
    case CAMPAIGN_STEP_VERIFY:
        rc = esim_cmd_device_information(queries, 3, &opts, &cmd, err);
        break;
    case CAMPAIGN_STEP_ERASE_KEEP:
        erase.preserve_data_plan = true;
        rc = esim_cmd_erase_device(&erase, &opts, &cmd, err);
        break;
    case CAMPAIGN_STEP_ESIM_WIPE:
        rc = esim_cmd_erase_device(&erase, &opts, &cmd, err);
        break;
    default:
        return esim_fail(err, ESIM_EINVAL, "unknown step");
    }
    if (rc != ESIM_OK)
        return rc;
    memset(out, 0, sizeof *out);
    out->body = cmd.body; /* taken over */
    /* The campaign names its commands with fresh UUIDs (36 characters). */
    snprintf(out->uuid, sizeof out->uuid, "%.*s", ESIM_UUID_LEN, cmd.command_uuid);
    snprintf(out->kind, sizeof out->kind, "%s", cmd.request_type);
    return ESIM_OK;
}

static esim_err apple_enqueue(const esim_service *svc, store *st, const campaign_command *cmd,
                              const char *const *udids, size_t n, esim_error *err)
{
    esim_enqueue_opts opts = {0};
    return esim_service_enqueue_on(svc, st, cmd->body.data, cmd->body.len, udids, n, &opts, err);
}

/* What Apple's error codes mean when the device gives no description. */
static const char *describe_error(int64_t code)
{
    switch (code) {
    case 36001:
        return "the device cannot reach its cellular stack";
    case 36002:
        return "the device's hardware does not support eSIM";
    case 36003:
        return "the cellular stack is busy";
    case 12021:
        return "the device does not know this command";
    default:
        return NULL;
    }
}

/* IsSupervised and OSVersion from a DeviceInformation answer, if present. */
static void answer_facts(const esim_msg *msg, campaign_reading *out)
{
    plist_t qr = msg->root ? plist_dict_get_item(msg->root, "QueryResponses") : NULL;
    if (!qr || plist_get_node_type(qr) != PLIST_DICT)
        return;
    plist_t sup = plist_dict_get_item(qr, "IsSupervised");
    if (sup && plist_get_node_type(sup) == PLIST_BOOLEAN) {
        uint8_t b = 0;
        plist_get_bool_val(sup, &b);
        out->supervised = b ? 1 : 0;
    }
    plist_t os = plist_dict_get_item(qr, "OSVersion");
    if (os && plist_get_node_type(os) == PLIST_STRING) {
        char *v = NULL;
        plist_get_string_val(os, &v);
        if (v)
            snprintf(out->os_version, sizeof out->os_version, "%s", v);
        free(v);
    }
}

static esim_err apple_read(campaign_step step, const esim_service_result *r, campaign_reading *out)
{
    memset(out, 0, sizeof *out);
    out->supervised = -1;
    if (!r || !r->msg)
        return ESIM_EINVAL;
    const esim_msg *msg = r->msg;
    out->result.status = msg->status;
    if (msg->status == ESIM_STATUS_ACKNOWLEDGED)
        answer_facts(msg, out);
    if (msg->error_chain_len) {
        const esim_error_chain_entry *e = &msg->error_chain[0];
        const char *text =
            e->us_english_description[0] ? e->us_english_description : e->localized_description;
        const char *known = describe_error(e->code);
        out->result.error_code = e->code;
        out->result.busy = e->code == 36003; /* the cellular stack is busy: try again later */
        /* A URL loading error under it (NSURLErrorDomain: the SM-DP+ could
         * not be reached, timed out, the connection dropped) means nothing
         * was downloaded and the server may be back later: try again too. */
        for (size_t k = 1; k < msg->error_chain_len; k++)
            if (strcmp(msg->error_chain[k].domain, "NSURLErrorDomain") == 0)
                out->result.busy = true;
        /* The gloss of a known code only when no further entry explains it:
         * a first entry can be generic (the device simulator answers 36001
         * with the SM-DP+'s refusal as the second). */
        if (msg->error_chain_len > 1)
            known = NULL;
        size_t o;
        if (text && *text && known)
            o = (size_t)snprintf(out->error_text, sizeof out->error_text, "%s — %s", text, known);
        else
            o = (size_t)snprintf(out->error_text, sizeof out->error_text, "%s",
                                 text && *text ? text
                                 : known       ? known
                                               : "");
        /* The deeper causes, in order (the SM-DP+'s subject/reason codes). */
        for (size_t k = 1; k < msg->error_chain_len && o < sizeof out->error_text; k++) {
            const esim_error_chain_entry *x = &msg->error_chain[k];
            const char *t =
                x->us_english_description[0] ? x->us_english_description : x->localized_description;
            if (!*t)
                continue;
            o += (size_t)snprintf(out->error_text + o, sizeof out->error_text - o, "%s%s%s%s",
                                  o ? " — " : "", x->domain, x->domain[0] ? ": " : "", t);
        }
        out->result.error_text = out->error_text[0] ? out->error_text : NULL;
    }
    if (step == CAMPAIGN_STEP_VERIFY && msg->status == ESIM_STATUS_ACKNOWLEDGED) {
        if (esim_msg_service_subscriptions(msg, &out->subs, &out->n_subs, NULL) != ESIM_OK) {
            out->subs = NULL;
            out->n_subs = 0;
        }
        out->result.subs = out->subs;
        out->result.n_subs = out->n_subs;
    }
    return ESIM_OK;
}

/* The service keeps an Apple answer whole: the result plist. */
static esim_err apple_read_recorded(store *st, campaign_step step, const store_queue_entry *q,
                                    campaign_reading *out)
{
    (void)st;
    memset(out, 0, sizeof *out);
    out->supervised = -1;
    esim_msg m = {0};
    if (!q->result.len ||
        esim_msg_parse(q->result.data, q->result.len, NULL, &m, NULL) != ESIM_OK) {
        esim_msg_free(&m);
        return ESIM_ENOTFOUND;
    }
    esim_service_result r = {.udid = q->udid,
                             .command_uuid = m.command_uuid,
                             .status = esim_status_name(m.status),
                             .msg = &m,
                             .platform = "apple"};
    esim_err rc = apple_read(step, &r, out);
    esim_msg_free(&m);
    return rc;
}

const campaign_platform campaign_platform_apple = {
    .name = "apple",
    .per_device_commands = false,
    .prepare = apple_prepare,
    .release = apple_release,
    .memory = apple_memory,
    .build = apple_build,
    .enqueue = apple_enqueue,
    .read = apple_read,
    .read_recorded = apple_read_recorded,
};
