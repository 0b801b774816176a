/*
 * nanomdm.c — the endpoints esim-mdm has because NanoMDM has them, so that
 * tooling written for NanoMDM works unchanged (docs/api.md, "NanoMDM
 * compatibility"): /version, /migration (check-ins of devices enrolled with
 * another server, taken without a device identity) and /v1/pushcert (the
 * APNs push certificate, read or replaced at run time). The enqueue and
 * push answers in NanoMDM's shape are in api.c, with the other routes.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/http.h>

#include "service/service_internal.h"

/* RFC 3339 UTC to the second, as NanoMDM writes not_after. */
static json_t *rfc3339(int64_t ms)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char s[40];
    strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(s);
}

/* GET /version: {"version": "..."} (no token, as NanoMDM). */
void nano_version(api_request *r)
{
#ifndef ESIM_VERSION
#define ESIM_VERSION "unknown"
#endif
    api_reply_json(r, 200, json_pack("{s:s}", "version", ESIM_VERSION));
}

/* GET /v1/pushcert[?topic=T]: the loaded certificate's topic and expiry. */
void nano_pushcert_get(api_request *r)
{
    char topic[256];
    int64_t not_after = 0;
    esim_error e = {{0}};
    esim_err rc = push_cert_info(r->svc, topic, &not_after, &e);
    if (rc != ESIM_OK) {
        api_error(r, rc == ESIM_ENOTFOUND ? 404 : 500, NULL, "%s", e.msg);
        return;
    }
    const char *want = r->query ? evhttp_find_header(r->query, "topic") : NULL;
    if (want && strcmp(want, topic) != 0) {
        api_error(r, 404, "topic", "topic: no push certificate for '%s' (the loaded one is '%s')",
                  want, topic);
        return;
    }
    api_reply_json(r, 200, json_pack("{s:s,s:o}", "topic", topic, "not_after", rfc3339(not_after)));
}

/* PUT /v1/pushcert: the body is the certificate and its unencrypted key,
 * PEM (cat push.pem push.key | curl -T - ...). */
void nano_pushcert_put(api_request *r)
{
    size_t len = 0;
    const unsigned char *body = http_body(r->req, &len);
    if (!body) {
        api_error(r, 400, "body", "the body must be the PEM push certificate and its PEM key");
        return;
    }
    char topic[256];
    int64_t not_after = 0;
    esim_error e = {{0}};
    esim_err rc = push_replace_cert(r->svc, body, len, topic, &not_after, &e);
    if (rc != ESIM_OK) {
        api_error(r, rc == ESIM_EINVAL || rc == ESIM_ECRYPTO ? 400 : api_status_for(rc),
                  rc == ESIM_EINVAL || rc == ESIM_ECRYPTO ? "body" : NULL, "%s", e.msg);
        return;
    }
    api_reply_json(r, 200, json_pack("{s:s,s:o}", "topic", topic, "not_after", rfc3339(not_after)));
}

/* The store half of a migration, on a store pool worker (at once on the
 * loop without one): the check-in's change and its ledger event, answered
 * (held) from here; the loop counts a store failure. */
typedef struct {
    esim_msg msg;
    esim_err rc;
} migration;

static void migration_run(api_request *r, void *arg)
{
    migration *m = arg;
    esim_msg *msg = &m->msg;
    store *st = r->st;
    esim_error e = {{0}};
    esim_err rc;
    int64_t now = esim_now_ms();
    if (msg->kind == ESIM_MSG_AUTHENTICATE) {
        store_authenticate_in in = {
            .udid = msg->udid,
            .is_enrollment_id = msg->is_enrollment_id,
            .topic = msg->topic,
            .cert_sha256 = "",
            .serial_number = msg->serial_number,
            .os_version = msg->os_version,
            .build_version = msg->build_version,
            .product_name = msg->product_name,
            .model = msg->model,
            .device_name = msg->device_name,
            .imei = msg->imei,
        };
        rc = esim_store_device_authenticate(st, &in, now, &e);
    } else if (msg->kind == ESIM_MSG_TOKEN_UPDATE) {
        esim_buf hex = {0};
        rc = esim_hex_encode(msg->token.data, msg->token.len, &hex);
        if (rc == ESIM_OK)
            rc = esim_store_device_token_update(st, msg->udid, NULL, msg->topic,
                                                (const char *)hex.data, msg->push_magic, now, &e);
        esim_buf_free(&hex);
    } else {
        rc = esim_store_device_bootstrap_set(st, msg->udid, NULL, msg->bootstrap_token.data,
                                             msg->bootstrap_token.len, now, &e);
    }
    if (rc == ESIM_OK)
        rc = esim_store_event_append(st, "migrated", msg->udid, NULL, msg->message_type, NULL, 0,
                                     now, &e);
    m->rc = rc;
    if (rc != ESIM_OK)
        api_error(r, api_status_for(rc), rc == ESIM_ENOTFOUND ? "udid" : NULL, "%s", e.msg);
    else
        api_reply_json(
            r, 200, json_pack("{s:s,s:s}", "udid", msg->udid, "message_type", msg->message_type));
}

static void migration_then(api_request *r, void *arg)
{
    migration *m = arg;
    if (!r->stopped && m->rc == ESIM_ESTORE)
        svc_store_failed(r->svc, NULL); /* then the held 503 counts it, as before */
    esim_msg_free(&m->msg);
    free(m);
}

/*
 * POST|PUT /migration: one check-in plist of a device enrolled with another
 * server (NanoMDM's nano2nano and micro2nano's llorne send them): its
 * Authenticate, its TokenUpdate (topic, token, PushMagic: enough to push
 * it) and its SetBootstrapToken. No device identity comes with them: the
 * device is bound to the first identity it presents here (store.c). No
 * webhook is sent, as NanoMDM sends none for migrations.
 */
void nano_migration(api_request *r)
{
    esim_service *svc = r->svc;
    if (!svc->cfg.migration) {
        api_error(r, 404, NULL,
                  "/migration is off: start the service with --migration to take enrolments "
                  "from another server");
        return;
    }
    size_t len = 0;
    const unsigned char *body = http_body(r->req, &len);
    esim_parse_limits limits = {svc->cfg.max_body, svc->cfg.max_depth};
    esim_msg msg = {0};
    esim_error e = {{0}};
    esim_err rc = body ? esim_msg_parse(body, len, &limits, &msg, &e)
                       : esim_fail(&e, ESIM_EINVAL, "the body must be a check-in plist");
    if (rc == ESIM_OK && msg.kind != ESIM_MSG_AUTHENTICATE && msg.kind != ESIM_MSG_TOKEN_UPDATE &&
        msg.kind != ESIM_MSG_SET_BOOTSTRAP_TOKEN)
        rc = esim_fail(&e, ESIM_EINVAL,
                       "%s: a migration takes Authenticate, TokenUpdate and SetBootstrapToken "
                       "check-ins",
                       msg.kind == ESIM_MSG_RESULT ? "a command result" : msg.message_type);
    if (rc == ESIM_OK && msg.user_id[0])
        rc = esim_fail(&e, ESIM_EINVAL,
                       "a user-channel check-in (UserID): esim-mdm manages the device channel "
                       "only");
    if (rc != ESIM_OK) {
        api_error(r, 400, "body", "%s", e.msg);
        esim_msg_free(&msg);
        return;
    }
    for (char *c = msg.topic; *c; c++) /* answers are JSON */
        if ((unsigned char)*c < 0x20)
            *c = '?';
    svc_utf8_sanitize(msg.topic);
    const char *topic = push_topic(svc);
    if (topic && msg.kind != ESIM_MSG_SET_BOOTSTRAP_TOKEN && strcmp(topic, msg.topic) != 0) {
        api_error(r, 409, "body",
                  "Topic '%.200s' is not this service's push topic '%.200s': the device could "
                  "never be woken; load its push certificate first (PUT /v1/pushcert)",
                  msg.topic, topic);
        esim_msg_free(&msg);
        return;
    }
    migration *m = malloc(sizeof *m);
    if (!m) {
        api_error(r, 500, NULL, "out of memory");
        esim_msg_free(&msg);
        return;
    }
    m->msg = msg;
    m->rc = ESIM_OK;
    api_store_job(r, migration_run, migration_then, m);
}
