/*
 * mdm.c — the device side: PUT /mdm and PUT /checkin. Each request is
 * checked (size, identity, plist, rate), then turned into exactly one store
 * transaction: a check-in (Authenticate, TokenUpdate, CheckOut) or a result
 * plus the choice of the next command, whose plist is the reply body.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include <openssl/crypto.h>
#include <plist/plist.h>

#include "core/internal.h"
#include "service/service_internal.h"

/* ---- per-device rate limit: a token bucket per UDID -------------------------- */

static size_t bucket_index(const char *udid)
{
    return (size_t)(esim_hash_str(udid) % SVC_BUCKETS);
}

bool rate_allow(esim_service *svc, const char *udid, int64_t now)
{
    size_t i = bucket_index(udid);
    svc_bucket *b = svc->buckets[i];
    while (b && strcmp(b->udid, udid) != 0)
        b = b->next;
    double burst = svc->cfg.device_burst;
    if (!b) {
        b = calloc(1, sizeof *b);
        if (!b)
            return true; /* out of memory is not the device's fault */
        snprintf(b->udid, sizeof b->udid, "%s", udid);
        b->tokens = burst;
        b->at_ms = now;
        b->next = svc->buckets[i];
        svc->buckets[i] = b;
        svc->n_buckets++;
    }
    b->tokens += svc->cfg.device_rate * (double)(now - b->at_ms) / 1000.0;
    if (b->tokens > burst)
        b->tokens = burst;
    b->at_ms = now;
    if (b->tokens < 1.0)
        return false;
    b->tokens -= 1.0;
    return true;
}

/* A bucket that has refilled carries no information: drop it, so memory
 * follows the devices active right now, not the fleet. */
void mdm_prune_buckets(esim_service *svc, int64_t now)
{
    double burst = svc->cfg.device_burst;
    for (size_t i = 0; i < SVC_BUCKETS; i++) {
        svc_bucket **pp = &svc->buckets[i];
        while (*pp) {
            svc_bucket *b = *pp;
            if (b->tokens + svc->cfg.device_rate * (double)(now - b->at_ms) / 1000.0 >= burst) {
                *pp = b->next;
                free(b);
                svc->n_buckets--;
            } else {
                pp = &b->next;
            }
        }
    }
}

/* ---- per-connection NotNow memory (the connection records live in conn.c) ---- */

/* NotNow: the device did not keep the command. Apple's rule is to leave it
 * queued but not to offer it again during this connection (the device would
 * only say NotNow again); it comes back on a later connection. */
static void conn_remember_not_now(esim_service *svc, struct evhttp_request *req, const char *udid,
                                  const char *uuid)
{
    svc_conn *c = conn_of(svc, evhttp_request_get_connection(req));
    if (!c)
        return;
    if (strcmp(c->udid, udid) != 0) { /* another device on this connection: start over */
        for (size_t i = 0; i < c->n_skip; i++)
            free(c->skip[i]);
        c->n_skip = 0;
        snprintf(c->udid, sizeof c->udid, "%s", udid);
    }
    if (c->n_skip == c->cap_skip) {
        char **grown = esim_grow(c->skip, &c->cap_skip, c->n_skip + 1, sizeof *grown);
        if (!grown)
            return;
        c->skip = grown;
    }
    char *copy = strdup(uuid);
    if (copy)
        c->skip[c->n_skip++] = copy;
}

/* ---- replies ------------------------------------------------------------------------ */

/* A command plist's Content-Type: XML or binary. */
static const char *command_content_type(const esim_buf *body)
{
    return body->len && body->data[0] == '<' ? "application/xml" : "application/x-apple-plist";
}

static void reply_text(esim_service *svc, struct evhttp_request *req, int code, const char *text)
{
    http_reply(svc, req, M_ROUTE_MDM, code, "text/plain; charset=utf-8", text, strlen(text));
}

/* A refused device, in the log (rate-limited): |event| and why, with the
 * peer address and the UDID once known. */
static void log_refused(esim_service *svc, struct evhttp_request *req, int kind, const char *event,
                        int code, const char *why)
{
    if (!svc_log_on(svc, ESIM_LOG_WARN))
        return;
    char peer[48], status[8];
    access_peer(req, peer);
    snprintf(status, sizeof status, "%d", code);
    svc_log_limited(svc, kind, ESIM_LOG_WARN, event, "peer", peer[0] ? peer : NULL, "udid",
                    svc->dev_udid[0] ? svc->dev_udid : NULL, "status", status, "reason", why, NULL);
}

static void reply_store_error(esim_service *svc, struct evhttp_request *req, esim_err rc,
                              const esim_error *e)
{
    switch (rc) {
    case ESIM_EAUTH:
    case ESIM_ENOTFOUND:
    case ESIM_ESTATE:
        log_refused(svc, req, rc == ESIM_EAUTH ? SVC_LOGLIM_IDENTITY : SVC_LOGLIM_DEVICE_AUTH,
                    rc == ESIM_EAUTH ? "identity_mismatch" : "device_refused", 403, e->msg);
        svc->m.auth_refused++;
        reply_text(svc, req, 403, e->msg);
        return;
    case ESIM_EINVAL:
        svc->m.malformed++;
        reply_text(svc, req, 400, e->msg);
        return;
    case ESIM_ESTORE:
        /* The database failed or went away (restarting, unreachable): the
         * operation was undone whole, so the device may simply come back.
         * 503 says so; the next request reconnects. */
        svc_store_failed(svc, e->msg);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "5");
        reply_text(svc, req, 503, "the store is unavailable; try again later");
        return;
    default:
        svc_store_failed(svc, e->msg);
        reply_text(svc, req, 500, "the store failed; try again later");
    }
}

/* ---- check-ins ------------------------------------------------------------------------ */

/* The request's query string (NULL: none), for url_params in webhooks. */
static const char *request_query(struct evhttp_request *req)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    return uri ? evhttp_uri_get_query(uri) : NULL;
}

/* Declarative Management with no declarations: the device's DDM channel
 * works (it syncs to "nothing declared" and reports status), and a device
 * asking for a declaration gets 404. */
#define DDM_TOKEN "esim-mdm-no-declarations"

static void answer_declarative(esim_service *svc, struct evhttp_request *req, const esim_msg *msg)
{
    static const char tokens[] = "{\"SyncTokens\":{\"DeclarationsToken\":\"" DDM_TOKEN
                                 "\",\"Timestamp\":\"2026-01-01T00:00:00Z\"}}";
    static const char items[] =
        "{\"Declarations\":{\"Activations\":[],\"Assets\":[],\"Configurations\":[],"
        "\"Management\":[]},\"DeclarationsToken\":\"" DDM_TOKEN "\"}";
    if (strcmp(msg->dm_endpoint, "tokens") == 0)
        http_reply(svc, req, M_ROUTE_MDM, 200, "application/json", tokens, sizeof tokens - 1);
    else if (strcmp(msg->dm_endpoint, "declaration-items") == 0)
        http_reply(svc, req, M_ROUTE_MDM, 200, "application/json", items, sizeof items - 1);
    else if (strcmp(msg->dm_endpoint, "status") == 0)
        http_reply(svc, req, M_ROUTE_MDM, 200, NULL, NULL, 0);
    else
        reply_text(svc, req, 404, "no such declaration: esim-mdm serves no declarations");
}

/* GetBootstrapToken's answer: {BootstrapToken: data}, or an empty body
 * when the device never set one (as NanoMDM answers). */
static void answer_bootstrap(esim_service *svc, struct evhttp_request *req, const esim_buf *tok)
{
    if (!tok->len) {
        http_reply(svc, req, M_ROUTE_MDM, 200, NULL, NULL, 0);
        return;
    }
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "BootstrapToken", plist_new_data((const char *)tok->data, tok->len));
    char *xml = NULL;
    uint32_t xml_len = 0;
    plist_to_xml(d, &xml, &xml_len);
    plist_free(d);
    if (!xml) {
        reply_text(svc, req, 500, "out of memory");
        return;
    }
    http_reply(svc, req, M_ROUTE_MDM, 200, "application/xml", xml, xml_len);
    OPENSSL_cleanse(xml, xml_len);
    plist_to_xml_free(xml);
}

/* ---- one device request's store operation ----------------------------------------
 * A check-in or a result is one store operation. Its job carries what the
 * operation needs, copied, so that it can run on a pool worker (pool.c)
 * while the loop serves other devices; the answer is finished on the loop
 * (mdm_job_done). Without the pool both halves run at once, on the loop. */
typedef struct {
    pool_job job;            /* first: the pool's view of it */
    const esim_service *svc; /* its configuration only, on a worker */
    struct evhttp_request *req;
    esim_msg msg; /* owned */
    const void *raw;
    size_t raw_len;
    esim_buf raw_copy; /* the body, when the job outlives the request handler */
    auth_identity id;
    bool duplicate;
    /* check-ins */
    esim_buf token;
    int64_t tally;
    /* results */
    char eid[ESIM_EID_LEN + 1];
    char *chain;
    char *skip[64];
    size_t n_skip;
    int64_t backoff_ms;
    store_exchange_out out;
    /* With webhooks on a store without batches (webhooks_in_unit): the
     * operation and its event's outbox rows are one unit, and |hooks| the
     * deliveries written in it, started from the done. */
    bool in_unit;
    char *query; /* the request's query, for url_params */
    hook_job *hooks;
} mdm_job;

/* A zeroed job: a spare one, or a new one. */
static mdm_job *mdm_job_new(esim_service *svc)
{
    if (svc->n_spare_jobs == 0)
        return calloc(1, sizeof(mdm_job));
    mdm_job *j = svc->spare_jobs[--svc->n_spare_jobs];
    memset(j, 0, sizeof *j);
    return j;
}

void mdm_spare_jobs_free(esim_service *svc)
{
    while (svc->n_spare_jobs)
        free(svc->spare_jobs[--svc->n_spare_jobs]);
}

static void mdm_job_free(esim_service *svc, mdm_job *j)
{
    if (j->token.data)
        OPENSSL_cleanse(j->token.data, j->token.len);
    esim_buf_free(&j->token);
    esim_buf_free(&j->raw_copy);
    esim_buf_free(&j->out.next.body);
    free(j->chain);
    for (size_t i = 0; i < j->n_skip; i++)
        free(j->skip[i]);
    free(j->query);
    webhooks_discard(j->hooks);
    esim_msg_free(&j->msg);
    if (svc->n_spare_jobs < SVC_SPARE_JOBS)
        svc->spare_jobs[svc->n_spare_jobs++] = j;
    else
        free(j);
}

/* Sets |j| up to write its event's outbox rows in its own unit when the
 * store has no batches to put them in; false out of memory. */
static bool mdm_job_unit(esim_service *svc, mdm_job *j)
{
    j->svc = svc;
    j->in_unit = webhooks_in_unit(svc);
    const char *q = j->in_unit ? request_query(j->req) : NULL;
    return !q || (j->query = strdup(q)) != NULL;
}

/* The unit of a job that writes its outbox rows (mdm_job_unit): begun
 * before its operation; false (pj->rc set) when it could not be. */
static bool mdm_unit_begin(mdm_job *j, store *st)
{
    if (!j->in_unit)
        return true;
    j->job.rc = esim_store_unit_begin_whole(st, &j->job.e);
    return j->job.rc == ESIM_OK;
}

/* Ends it: the event's body (its id made here, once) and its rows join the
 * change, or the whole is undone. */
static void mdm_unit_end(mdm_job *j, store *st, int64_t tally)
{
    pool_job *pj = &j->job;
    if (!j->in_unit)
        return;
    if (pj->rc == ESIM_OK) {
        svc_event_extra x = {j->query, tally};
        pj->rc = webhooks_write(j->svc, st, &j->msg, j->raw, j->raw_len, &x, &j->hooks, &pj->e);
    }
    esim_err end = esim_store_unit_end(st, pj->rc == ESIM_OK, &pj->e);
    if (pj->rc == ESIM_OK)
        pj->rc = end;
    if (pj->rc != ESIM_OK) {
        webhooks_discard(j->hooks);
        j->hooks = NULL;
    }
}

/* On the loop: its webhooks (and result hooks) once committed. */
static void mdm_after_commit(esim_service *svc, mdm_job *j, const svc_event_extra *x, bool hook,
                             svc_reply *refill)
{
    if (j->in_unit) {
        svc_after_commit_written(svc, &j->msg, j->hooks, hook, refill, j->id.cert_sha256);
        j->hooks = NULL;
    } else {
        svc_after_commit(svc, &j->msg, j->raw, j->raw_len, x, hook, refill, j->id.cert_sha256);
    }
}

/* Runs the job's store operation (on a worker, or on the loop without a
 * pool), then finishes its answer on the loop. Takes |j|. */
static void mdm_job_go(esim_service *svc, mdm_job *j)
{
    if (pool_on(svc)) {
        if (j->raw_len && esim_buf_append(&j->raw_copy, j->raw, j->raw_len) != ESIM_OK) {
            reply_text(svc, j->req, 503, "out of memory");
            mdm_job_free(svc, j);
            return;
        }
        if (j->raw_len)
            j->raw = j->raw_copy.data;
    }
    pool_run(svc, &j->job);
}

/* The UDID the logs name for the device request being handled (a parsed
 * message's, so it fits: no snprintf for it twice a request). */
static void dev_udid_set(esim_service *svc, const char *udid)
{
    _Static_assert(sizeof svc->dev_udid == sizeof((esim_msg *)0)->udid, "a message's UDID fits");
    memcpy(svc->dev_udid, udid, strlen(udid) + 1);
}

/* The device request of |j| is the one being handled (logs name it). */
static void mdm_job_enter(esim_service *svc, mdm_job *j)
{
    svc->dev_req = j->req;
    dev_udid_set(svc, j->msg.udid);
}

static void checkin_run(store *st, pool_job *pj)
{
    mdm_job *j = (mdm_job *)pj;
    const esim_msg *msg = &j->msg;
    const auth_identity *id = &j->id;
    esim_error *e = &pj->e;
    int64_t now = esim_now_ms();
    esim_err rc;
    if (!mdm_unit_begin(j, st))
        return;
    switch (msg->kind) {
    case ESIM_MSG_AUTHENTICATE: {
        store_authenticate_in in = {
            .udid = msg->udid,
            .is_enrollment_id = msg->is_enrollment_id,
            .topic = msg->topic,
            .cert_sha256 = id->cert_sha256,
            .cert_not_before = id->not_before_ms,
            .serial_number = msg->serial_number,
            .os_version = msg->os_version,
            .build_version = msg->build_version,
            .product_name = msg->product_name,
            .model = msg->model,
            .device_name = msg->device_name,
            .imei = msg->imei,
        };
        rc = esim_store_device_authenticate(st, &in, now, e);
        break;
    }
    case ESIM_MSG_TOKEN_UPDATE: {
        /* Any non-empty token is stored (the parser took 1 to 100 bytes):
         * test clients enrol with placeholders, and APNs is the judge at
         * push time (a refusal lands in the ledger as push_failed). */
        esim_buf hex = {0};
        rc = esim_hex_encode(msg->token.data, msg->token.len, &hex);
        if (rc == ESIM_OK)
            rc = esim_store_device_token_update_tally(st, msg->udid, id->cert_sha256, msg->topic,
                                                      (const char *)hex.data, msg->push_magic, now,
                                                      &j->tally, e);
        esim_buf_free(&hex);
        break;
    }
    case ESIM_MSG_CHECKOUT:
        rc = esim_store_device_checkout(st, msg->udid, id->cert_sha256, now, e);
        break;
    case ESIM_MSG_SET_BOOTSTRAP_TOKEN:
        rc = esim_store_device_bootstrap_set(st, msg->udid, id->cert_sha256,
                                             msg->bootstrap_token.data, msg->bootstrap_token.len,
                                             now, e);
        break;
    case ESIM_MSG_GET_BOOTSTRAP_TOKEN:
        rc = esim_store_device_bootstrap_get(st, msg->udid, id->cert_sha256, &j->token, now, e);
        break;
    case ESIM_MSG_USER_AUTHENTICATE:
        rc = esim_store_device_checkin(st, msg->udid, id->cert_sha256, "user_authenticate",
                                       "declined: the user channel is off", now, e);
        break;
    case ESIM_MSG_DECLARATIVE_MANAGEMENT:
        rc = esim_store_device_checkin(st, msg->udid, id->cert_sha256, "declarative_management",
                                       msg->dm_endpoint, now, e);
        break;
    case ESIM_MSG_GET_TOKEN:
        rc = esim_store_device_checkin(st, msg->udid, id->cert_sha256, "get_token",
                                       msg->token_service_type, now, e);
        break;
    default:
        rc = esim_fail(e, ESIM_EINVAL, "not a check-in message");
    }
    pj->rc = rc;
    mdm_unit_end(j, st, msg->kind == ESIM_MSG_TOKEN_UPDATE ? j->tally : -1);
}

static void checkin_done(esim_service *svc, pool_job *pj)
{
    mdm_job *j = (mdm_job *)pj;
    struct evhttp_request *req = j->req;
    esim_msg *msg = &j->msg;
    mdm_job_enter(svc, j);
    if (pj->rc != ESIM_OK) {
        reply_store_error(svc, req, pj->rc, &pj->e);
        goto out;
    }
    svc->m.checkins[msg->kind - 1]++;
    switch (msg->kind) {
    case ESIM_MSG_USER_AUTHENTICATE:
        /* NanoMDM's default: management of the user is declined. */
        reply_text(svc, req, 410, "the user channel is off: esim-mdm manages the device channel");
        break;
    case ESIM_MSG_GET_BOOTSTRAP_TOKEN:
        answer_bootstrap(svc, req, &j->token);
        break;
    case ESIM_MSG_DECLARATIVE_MANAGEMENT:
        answer_declarative(svc, req, msg);
        break;
    case ESIM_MSG_GET_TOKEN: {
        char words[300];
        snprintf(words, sizeof words,
                 "no token service for TokenServiceType '%.128s': esim-mdm issues no tokens",
                 msg->token_service_type);
        reply_text(svc, req, 404, words);
        break;
    }
    default:
        http_reply(svc, req, M_ROUTE_MDM, 200, NULL, NULL, 0);
    }
    svc_event_extra x = {request_query(req), msg->kind == ESIM_MSG_TOKEN_UPDATE ? j->tally : -1};
    mdm_after_commit(svc, j, &x, false, NULL);
out:
    svc->dev_req = NULL;
    mdm_job_free(svc, j);
}

/* Takes |msg| (left zeroed). */
static void handle_checkin(esim_service *svc, struct evhttp_request *req, esim_msg *msg,
                           const auth_identity *id, const void *raw, size_t len)
{
    esim_error e = {{0}};
    /* A device enrolled under another push certificate could never be
     * woken by this service: its Topic must be the one pushes go out on. */
    const char *topic = push_topic(svc);
    if (topic && (msg->kind == ESIM_MSG_AUTHENTICATE || msg->kind == ESIM_MSG_TOKEN_UPDATE) &&
        strcmp(topic, msg->topic) != 0) {
        svc->m.auth_refused++;
        esim_fail(&e, ESIM_EAUTH,
                  "Topic '%.200s' is not this service's push topic '%.200s': the "
                  "enrolment profile names another MDM push certificate",
                  msg->topic, topic);
        log_refused(svc, req, SVC_LOGLIM_DEVICE_AUTH, "device_refused", 403, e.msg);
        reply_text(svc, req, 403, e.msg);
        return;
    }
    mdm_job *j = mdm_job_new(svc);
    if (!j) {
        reply_text(svc, req, 503, "out of memory");
        return;
    }
    j->job.run = checkin_run;
    j->job.done = checkin_done;
    j->req = req;
    if (!mdm_job_unit(svc, j)) {
        reply_text(svc, req, 503, "out of memory");
        mdm_job_free(svc, j);
        return;
    }
    j->msg = *msg;
    memset(msg, 0, sizeof *msg);
    j->raw = raw;
    j->raw_len = len;
    j->id = *id;
    j->tally = -1;
    mdm_job_go(svc, j);
}

/* ---- results ---------------------------------------------------------------------------- */

/* The ErrorChain as a JSON array, for the ledger and the API. */
static char *error_chain_json(const esim_msg *msg)
{
    if (msg->error_chain_len == 0)
        return NULL;
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < msg->error_chain_len; i++) {
        const esim_error_chain_entry *c = &msg->error_chain[i];
        json_array_append_new(arr, json_pack("{s:I,s:s,s:s,s:s}", "error_code", (json_int_t)c->code,
                                             "error_domain", c->domain, "localized_description",
                                             c->localized_description, "us_english_description",
                                             c->us_english_description));
    }
    char *s = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return s;
}

/* The EID a DeviceInformation answer reveals (ServiceSubscriptions), if any. */
static void learned_eid(const esim_msg *msg, char eid[ESIM_EID_LEN + 1])
{
    eid[0] = '\0';
    if (msg->status != ESIM_STATUS_ACKNOWLEDGED)
        return;
    esim_subscription *subs = NULL;
    size_t n = 0;
    if (esim_msg_service_subscriptions(msg, &subs, &n, NULL) != ESIM_OK)
        return;
    for (size_t i = 0; i < n && !eid[0]; i++)
        if (subs[i].eid[0] && esim_eid_validate(subs[i].eid, NULL) == ESIM_OK)
            memcpy(eid, subs[i].eid, ESIM_EID_LEN + 1);
    free(subs);
}

static void result_run(store *st, pool_job *pj)
{
    mdm_job *j = (mdm_job *)pj;
    const esim_msg *msg = &j->msg;
    bool idle = msg->status == ESIM_STATUS_IDLE;
    store_exchange_in in = {
        .udid = msg->udid,
        .cert_sha256 = j->id.cert_sha256,
        .status = esim_status_name(msg->status),
        .command_uuid = idle ? NULL : msg->command_uuid,
        .raw = j->raw,
        .raw_len = j->raw_len,
        .error_chain_json = j->chain,
        .eid = j->eid[0] ? j->eid : NULL,
        .skip_uuids = (const char *const *)j->skip,
        .n_skip = j->n_skip,
        .not_now_backoff_ms = j->backoff_ms,
        .hold_next = j->duplicate,
    };
    if (!mdm_unit_begin(j, st))
        return;
    pj->rc = esim_store_device_exchange(st, &in, esim_now_ms(), &j->out, &pj->e);
    mdm_unit_end(j, st, -1);
}

static void result_done(esim_service *svc, pool_job *pj)
{
    mdm_job *j = (mdm_job *)pj;
    struct evhttp_request *req = j->req;
    esim_msg *msg = &j->msg;
    bool duplicate = j->duplicate;
    mdm_job_enter(svc, j);
    if (pj->rc != ESIM_OK) {
        reply_store_error(svc, req, pj->rc, &pj->e);
        goto out;
    }
    store_exchange_out *out = &j->out;
    svc->m.results[msg->status]++;
    if (out->outcome == STORE_RESULT_ANOMALY)
        svc->m.anomalies++;
    if (out->outcome == STORE_RESULT_APPLIED && msg->status == ESIM_STATUS_NOT_NOW)
        conn_remember_not_now(svc, req, msg->udid, msg->command_uuid);
    svc_reply *held = NULL;
    if (out->next.present) {
        svc->m.commands_sent++;
        http_reply_take(svc, req, M_ROUTE_MDM, 200, command_content_type(&out->next.body),
                        &out->next.body);
    } else {
        held = http_reply(svc, req, M_ROUTE_MDM, 200, NULL, NULL, 0);
    }
    /* A duplicate got no command: if it was the device itself, a push
     * brings it back (with a fresh signature) for what it is owed. */
    if (duplicate && replay_push_allowed(svc, msg->udid, esim_now_ms()))
        push_later(svc, msg->udid);
    /* A final answer with nothing after it: what the result hooks queue
     * next for the device can still go in this answer (mdm_refill_answers).
     * Not after NotNow (the device is busy) nor a duplicate. */
    bool applied = out->outcome == STORE_RESULT_APPLIED;
    bool refill = applied && held && !duplicate && msg->status != ESIM_STATUS_NOT_NOW;
    svc_event_extra x = {request_query(req), -1};
    mdm_after_commit(svc, j, &x, applied, refill ? held : NULL);
out:
    svc->dev_req = NULL;
    mdm_job_free(svc, j);
}

/* Takes |msg| (left zeroed). */
static void handle_result(esim_service *svc, struct evhttp_request *req, esim_msg *msg,
                          const auth_identity *id, bool duplicate, const void *raw, size_t len)
{
    mdm_job *j = mdm_job_new(svc);
    if (!j) {
        reply_text(svc, req, 503, "out of memory");
        return;
    }
    j->job.run = result_run;
    j->job.done = result_done;
    j->req = req;
    if (!mdm_job_unit(svc, j)) {
        reply_text(svc, req, 503, "out of memory");
        mdm_job_free(svc, j);
        return;
    }
    j->raw = raw;
    j->raw_len = len;
    j->id = *id;
    j->duplicate = duplicate;
    learned_eid(msg, j->eid);
    j->chain = error_chain_json(msg);
    j->backoff_ms = msg->status == ESIM_STATUS_NOT_NOW ? svc->cfg.not_now_backoff_ms : 0;

    svc_conn *c = conn_of(svc, evhttp_request_get_connection(req));
    bool same_device = c && strcmp(c->udid, msg->udid) == 0;
    /* The command now answered NotNow must not come straight back either.
     * Copies: the connection may close before a pool worker gets to it. */
    for (size_t i = 0; same_device && i < c->n_skip && j->n_skip < 63; i++)
        if ((j->skip[j->n_skip] = strdup(c->skip[i])) != NULL)
            j->n_skip++;
    if (msg->status == ESIM_STATUS_NOT_NOW &&
        (j->skip[j->n_skip] = strdup(msg->command_uuid)) != NULL)
        j->n_skip++;
    j->msg = *msg;
    memset(msg, 0, sizeof *msg);
    mdm_job_go(svc, j);
}

/* With a store pool, each held answer's refill is a job: the device's
 * Idle exchange runs on a worker, the answer stays held (send_batch passes
 * it by) and goes out from refill_done, with the command or empty as
 * before. Its batch is committed already: nothing waits but that answer. */
typedef struct {
    pool_job job; /* first: the pool's view of it */
    svc_reply *r;
    char udid[sizeof((esim_msg *)0)->udid];
    char cert[65];
    char *skip[64]; /* copies: the connection may close meanwhile */
    size_t n_skip;
    store_exchange_out out;
} refill_job;

static void refill_run(store *st, pool_job *pj)
{
    refill_job *j = (refill_job *)pj;
    store_exchange_in in = {
        .udid = j->udid,
        .cert_sha256 = j->cert,
        .status = "Idle",
        .skip_uuids = (const char *const *)j->skip,
        .n_skip = j->n_skip,
    };
    pj->rc = esim_store_device_exchange(st, &in, esim_now_ms(), &j->out, &pj->e);
}

static void refill_done(esim_service *svc, pool_job *pj)
{
    refill_job *j = (refill_job *)pj;
    svc_reply *r = j->r;
    if (pj->ran && pj->rc == ESIM_OK && j->out.next.present) {
        esim_buf_free(&r->body);
        r->body = j->out.next.body;
        memset(&j->out.next.body, 0, sizeof j->out.next.body);
        r->content_type = command_content_type(&r->body);
        svc->m.commands_sent++;
    } else if (pj->ran && pj->rc == ESIM_ESTORE) {
        svc_store_failed(svc, NULL);
    }
    svc_reply_send(svc, r);
    esim_buf_free(&j->out.next.body);
    for (size_t i = 0; i < j->n_skip; i++)
        free(j->skip[i]);
    free(j);
}

static void refill_on_pool(esim_service *svc, svc_deferred *list)
{
    for (svc_deferred *d = list; d; d = d->next) {
        svc_reply *r = d->refill;
        if (!r)
            continue;
        d->refill = NULL;
        if (!evhttp_request_get_connection(r->req))
            continue; /* the device hung up: it gets its command when it comes back */
        refill_job *j = calloc(1, sizeof *j);
        if (!j)
            continue; /* out of memory: the empty answer stands */
        j->job.run = refill_run;
        j->job.done = refill_done;
        j->r = r;
        snprintf(j->udid, sizeof j->udid, "%s", d->msg.udid);
        snprintf(j->cert, sizeof j->cert, "%s", d->cert_sha256);
        svc_conn *c = conn_of(svc, evhttp_request_get_connection(r->req));
        for (size_t i = 0; c && strcmp(c->udid, d->msg.udid) == 0 && i < c->n_skip && i < 64; i++)
            if ((j->skip[j->n_skip] = strdup(c->skip[i])) != NULL)
                j->n_skip++;
        r->held = true;
        pool_submit(svc, &j->job);
    }
}

void mdm_refill_answers(esim_service *svc, svc_deferred *list)
{
    omadm_refill_answers(svc, list); /* the Windows devices' answers among them */
    size_t n = 0;
    for (svc_deferred *d = list; d; d = d->next) {
        if (!d->refill_wanted)
            d->refill = NULL; /* nothing new for it: the empty answer stands */
        n += d->refill != NULL;
    }
    if (n == 0)
        return;
    if (pool_on(svc)) {
        refill_on_pool(svc, list);
        return;
    }
    /* One commit for them all, when the back end batches. */
    bool batched = (esim_store_features(svc->st) & ESIM_STORE_FEATURE_BATCH) &&
                   esim_store_batch_begin(svc->st, NULL) == ESIM_OK;
    int64_t now = esim_now_ms();
    for (svc_deferred *d = list; d; d = d->next) {
        svc_reply *r = d->refill;
        if (!r)
            continue;
        d->refill = NULL; /* set again below when the answer got a command */
        if (!evhttp_request_get_connection(r->req))
            continue; /* the device hung up: it gets its command when it comes back */
        /* What the device said NotNow to on this connection stays out. */
        svc_conn *c = conn_of(svc, evhttp_request_get_connection(r->req));
        const char *skip[64];
        size_t n_skip = 0;
        for (size_t i = 0; c && strcmp(c->udid, d->msg.udid) == 0 && i < c->n_skip && i < 64; i++)
            skip[n_skip++] = c->skip[i];
        store_exchange_in in = {
            .udid = d->msg.udid,
            .cert_sha256 = d->cert_sha256,
            .status = "Idle",
            .skip_uuids = skip,
            .n_skip = n_skip,
        };
        store_exchange_out out = {0};
        esim_err rc = esim_store_device_exchange(svc->st, &in, now, &out, NULL);
        if (rc == ESIM_OK && out.next.present) {
            esim_buf_free(&r->body);
            r->body = out.next.body;
            memset(&out.next.body, 0, sizeof out.next.body);
            r->content_type = command_content_type(&r->body);
            svc->m.commands_sent++;
            d->refill = r;
        } else if (rc == ESIM_ESTORE) {
            svc_store_failed(svc, NULL);
        }
        esim_buf_free(&out.next.body);
    }
    if (!batched || esim_store_batch_commit(svc->st, NULL) == ESIM_OK)
        return;
    /* Undone: the commands are queued still; the devices get empty answers
     * and a push brings them back for those commands. */
    svc_store_failed(svc, NULL);
    for (svc_deferred *d = list; d; d = d->next) {
        if (!d->refill)
            continue;
        esim_buf_free(&d->refill->body);
        d->refill->content_type = NULL;
        svc->m.commands_sent--;
        d->refill = NULL;
        push_later(svc, d->msg.udid);
    }
}

/* Text a device sends is stored, shown by the API and the diagnosis page
 * and posted to webhooks, all as JSON: a byte that is not UTF-8 becomes '?'
 * (the raw message, kept as sent, still has it). */
static void sanitize_text(esim_msg *m)
{
    char *fields[] = {m->topic,         m->os_version, m->build_version, m->product_name,
                      m->serial_number, m->imei,       m->meid,          m->device_name,
                      m->model,         m->push_magic, m->command_uuid,  m->request_type,
                      m->message_type,  m->user_id,    m->dm_endpoint,   m->token_service_type};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        svc_utf8_sanitize(fields[i]);
    for (size_t i = 0; i < m->error_chain_len; i++) {
        svc_utf8_sanitize(m->error_chain[i].domain);
        svc_utf8_sanitize(m->error_chain[i].localized_description);
        svc_utf8_sanitize(m->error_chain[i].us_english_description);
    }
}

/* ---- the endpoint ------------------------------------------------------------------------ */

void mdm_handle(esim_service *svc, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_PUT) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "PUT");
        reply_text(svc, req, 405, "devices use PUT on this endpoint");
        return;
    }
    size_t len = 0;
    const unsigned char *body = http_body(req, &len);
    if (len > svc->cfg.max_body) {
        svc->m.too_big++;
        reply_text(svc, req, 413, "message too large");
        return;
    }
    /* Identity first: nothing an unauthenticated peer sends is parsed further. */
    auth_identity id;
    esim_error e = {{0}};
    esim_err rc = auth_device_request(svc, req, body, len, &id, &e);
    if (rc != ESIM_OK) {
        svc->m.auth_refused++;
        log_refused(svc, req, SVC_LOGLIM_DEVICE_AUTH, "device_auth_refused",
                    rc == ESIM_EAUTH ? 401 : 403, e.msg);
        reply_text(svc, req, rc == ESIM_EAUTH ? 401 : 403, e.msg);
        return;
    }
    if (!body) {
        svc->m.malformed++;
        reply_text(svc, req, 400, "empty body: expected a check-in message or a command result");
        return;
    }
    /* Real clients may omit Content-Type on results, so the body decides
     * what the message is, never the header. */
    esim_parse_limits limits = {svc->cfg.max_body, svc->cfg.max_depth};
    esim_msg msg = {0};
    rc = esim_msg_parse(body, len, &limits, &msg, &e);
    if (rc != ESIM_OK) {
        svc->m.malformed++;
        reply_text(svc, req, 400, e.msg);
        esim_msg_free(&msg);
        return;
    }
    sanitize_text(&msg);
    if (svc->dev_req == req)
        dev_udid_set(svc, msg.udid);
    /* The user channel (a message naming a UserID) is not managed: the
     * device's own channel must not take its tokens or answers. */
    if (msg.user_id[0] && msg.kind != ESIM_MSG_USER_AUTHENTICATE) {
        reply_text(svc, req, 410,
                   "the user channel is off: esim-mdm manages the device channel only");
        esim_msg_free(&msg);
        return;
    }
    if (!rate_allow(svc, msg.udid, esim_now_ms())) {
        svc->m.rate_limited++;
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        reply_text(svc, req, 429, "too many requests from this device; slow down");
        esim_msg_free(&msg);
        return;
    }
    /* Replays (replay.c): a stale signature is refused; a duplicate result
     * is recorded like any (a second answer is an anomaly, a second Idle
     * nothing) but hands out no command; a duplicate check-in does nothing. */
    int64_t now = esim_now_ms();
    svc_replay_verdict v =
        replay_check(svc, msg.udid, id.signed_at_ms, body, len, conn_origin(svc, req), now, &e);
    if (v == SVC_REPLAY_STALE) {
        svc->m.replays_stale++;
        svc->m.auth_refused++;
        log_refused(svc, req, SVC_LOGLIM_DEVICE_AUTH, "replay_refused", 403, e.msg);
        reply_text(svc, req, 403, e.msg);
        esim_msg_free(&msg);
        return;
    }
    bool duplicate = v == SVC_REPLAY_DUPLICATE;
    if (duplicate)
        svc->m.replays_duplicate++;
    if (duplicate && msg.kind != ESIM_MSG_RESULT) {
        /* A check-in taken already: doing it again could only undo what
         * came after it (an older token over a newer one). */
        http_reply(svc, req, M_ROUTE_MDM, 200, NULL, NULL, 0);
        esim_msg_free(&msg);
        return;
    }
    if (msg.kind == ESIM_MSG_RESULT)
        handle_result(svc, req, &msg, &id, duplicate, body, len);
    else
        handle_checkin(svc, req, &msg, &id, body, len);
    esim_msg_free(&msg);
}
