/*
 * api.c — the admin side: a table of routes (method, pattern, handler) for
 * the JSON API under /v1/ (bearer token, compared in constant time), the
 * NanoMDM-compatible raw enqueue, /metrics and /healthz, then the routes
 * modules add (esim_service_add_route). docs/api.md is the reference for
 * every endpoint here.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "service/service_internal.h"

/* ---- helpers ---------------------------------------------------------------------- */

void api_send(api_request *r, int code, const char *content_type, const void *body, size_t len)
{
    if (!r->on_worker && !r->hold) {
        r->answered = true;
        http_reply(r->svc, r->req, M_ROUTE_API, code, content_type, body, len);
        return;
    }
    esim_buf_free(&r->held.body);
    if (len && esim_buf_append(&r->held.body, body, len) != ESIM_OK) {
        static const char oom[] = "{\"error\":{\"status\":500,\"message\":\"out of memory\"}}\n";
        code = 500;
        content_type = "application/json";
        esim_buf_free(&r->held.body);
        esim_buf_append(&r->held.body, oom, sizeof oom - 1);
    }
    r->held.set = true;
    r->held.route = M_ROUTE_API;
    r->held.code = code;
    r->held.type = content_type;
}

void api_add_header(api_request *r, const char *name, const char *value)
{
    if (!r->on_worker) { /* held on the loop too: the request keeps its headers */
        evhttp_add_header(evhttp_request_get_output_headers(r->req), name, value);
        return;
    }
    if (r->held.n_headers < sizeof r->held.headers / sizeof r->held.headers[0]) {
        r->held.headers[r->held.n_headers][0] = name;
        r->held.headers[r->held.n_headers++][1] = value;
    }
}

void api_reply_json(api_request *r, int code, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        static const char oom[] = "{\"error\":{\"status\":500,\"message\":\"out of memory\"}}\n";
        api_send(r, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    size_t len = strlen(text);
    text[len] = '\0';
    esim_buf b = {0};
    esim_buf_append(&b, text, len);
    esim_buf_append(&b, "\n", 1);
    free(text);
    api_send(r, code, "application/json", b.data, b.len);
    esim_buf_free(&b);
}

void api_error(api_request *r, int code, const char *field, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Messages quote what the client sent (paths, keys): keep them JSON. */
    svc_utf8_sanitize(msg);
    if (r->on_worker) { /* what access_audit_note does, on the loop */
        size_t l = strnlen(msg, sizeof r->detail - 1);
        memcpy(r->detail, msg, l);
        r->detail[l] = '\0';
    } else
        access_audit_note(r->svc, r->req, 0, msg);
    if (code == 503) { /* the store failed (api_status_for) */
        if (r->on_worker)
            r->held.store_failed = true; /* svc_store_failed on the loop */
        else
            svc_store_failed(r->svc, msg);
        api_add_header(r, "Retry-After", "5");
    }
    json_t *e = json_pack("{s:i,s:s}", "status", code, "message", msg);
    if (e && field)
        json_object_set_new(e, "field", json_string(field));
    api_reply_json(r, code, json_pack("{s:o}", "error", e));
}

int api_status_for(esim_err rc)
{
    switch (rc) {
    case ESIM_OK:
        return 200;
    case ESIM_EINVAL:
        return 400;
    case ESIM_ETOOBIG:
        return 413;
    case ESIM_ENOTFOUND:
        return 404;
    case ESIM_EEXIST:
    case ESIM_ESTATE:
        return 409;
    case ESIM_EAUTH:
        return 403;
    case ESIM_ESTORE: /* undone whole: the client may try again */
        return 503;
    default:
        return 500;
    }
}

json_t *api_body_json(api_request *r)
{
    size_t len = 0;
    const unsigned char *body = http_body(r->req, &len);
    if (!body) {
        api_error(r, 400, NULL, "the body must be a JSON object");
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        api_error(r, 400, NULL, "bad JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        api_error(r, 400, NULL, "the body must be a JSON object");
        return NULL;
    }
    return root;
}

/* Times as RFC 3339 UTC with milliseconds; 0 (never) becomes null. */
static json_t *ts(int64_t ms)
{
    if (ms <= 0)
        return json_null();
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char s[80];
    snprintf(s, sizeof s, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    return json_string(s);
}

static json_t *str_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

static const char *query_get(api_request *r, const char *key)
{
    return r->query ? evhttp_find_header(r->query, key) : NULL;
}

/* ---- JSON views of store records ----------------------------------------------------- */

static json_t *device_json(const store_device *d)
{
    json_t *o = json_object();
    json_object_set_new(o, "udid", json_string(d->udid));
    json_object_set_new(o, "platform", json_string(d->platform[0] ? d->platform : "apple"));
    json_object_set_new(o, "enrollment_id", json_boolean(d->is_enrollment_id));
    json_object_set_new(o, "enrolled", json_boolean(d->enrolled));
    json_object_set_new(o, "serial_number", str_or_null(d->serial_number));
    json_object_set_new(o, "product_name", str_or_null(d->product_name));
    json_object_set_new(o, "model", str_or_null(d->model));
    json_object_set_new(o, "device_name", str_or_null(d->device_name));
    json_object_set_new(o, "os_version", str_or_null(d->os_version));
    json_object_set_new(o, "build_version", str_or_null(d->build_version));
    json_object_set_new(o, "imei", str_or_null(d->imei));
    json_object_set_new(o, "eid", str_or_null(d->eid));
    json_object_set_new(o, "topic", str_or_null(d->topic));
    json_object_set_new(o, "identity_sha256", str_or_null(d->cert_sha256));
    json_object_set_new(o, "push",
                        json_pack("{s:s,s:o,s:o}", "state",
                                  esim_store_push_state_name(d->push_state), "token_updated_at",
                                  ts(d->token_updated_at), "repush_due_at", ts(d->push_due_at)));
    json_object_set_new(o, "enrolled_at", ts(d->enrolled_at));
    json_object_set_new(o, "checked_out_at", ts(d->checked_out_at));
    json_object_set_new(o, "last_seen_at", ts(d->last_seen_at));
    return o;
}

static json_t *entry_json(const store_queue_entry *e, bool with_udid, bool with_raw)
{
    json_t *o = json_object();
    if (with_udid)
        json_object_set_new(o, "udid", json_string(e->udid));
    json_object_set_new(o, "command_uuid", json_string(e->command_uuid));
    json_object_set_new(o, "request_type", json_string(e->request_type));
    json_object_set_new(o, "state", json_string(esim_store_qstate_name(e->state)));
    json_object_set_new(o, "priority", json_integer(e->priority));
    json_object_set_new(o, "attempts", json_integer(e->attempts));
    json_object_set_new(o, "not_now_count", json_integer(e->not_now_count));
    json_object_set_new(o, "enqueued_at", ts(e->enqueued_at));
    json_object_set_new(o, "pushed_at", ts(e->pushed_at));
    json_object_set_new(o, "sent_at", ts(e->sent_at));
    json_object_set_new(o, "answered_at", ts(e->answered_at));
    json_object_set_new(o, "updated_at", ts(e->updated_at));
    json_object_set_new(o, "expires_at", ts(e->expires_at));
    json_t *chain = e->error_chain_json ? json_loads(e->error_chain_json, 0, NULL) : NULL;
    if (json_is_object(chain)) { /* a Windows answer: the status of every item */
        json_object_set(o, "syncml", json_object_get(chain, "syncml"));
        json_decref(chain);
        chain = NULL;
    }
    json_object_set_new(o, "error_chain", chain ? chain : json_array());
    if (with_raw) {
        esim_buf b64 = {0};
        if (e->result.len && esim_base64_encode(e->result.data, e->result.len, &b64) == ESIM_OK)
            json_object_set_new(o, "result", json_string((const char *)b64.data));
        else
            json_object_set_new(o, "result", json_null());
        esim_buf_free(&b64);
    }
    return o;
}

static json_t *push_states_json(const char *const *udids, const esim_push_state *ps, size_t n)
{
    json_t *devices = json_object();
    for (size_t i = 0; i < n; i++)
        json_object_set_new(
            devices, udids[i],
            json_pack("{s:b,s:s}", "queued", 1, "push", esim_push_state_name(ps[i])));
    return devices;
}

/* ---- handlers -------------------------------------------------------------------------- */

static void h_healthz(api_request *r)
{
    api_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static void h_metrics(api_request *r)
{
    esim_buf b = {0};
    if (svc_metrics_text(r->svc, &b) != ESIM_OK) {
        esim_buf_free(&b);
        api_error(r, 500, NULL, "the metrics could not be gathered (out of memory)");
        return;
    }
    http_reply(r->svc, r->req, M_ROUTE_OTHER, 200, "text/plain; version=0.0.4", b.data, b.len);
    esim_buf_free(&b);
}

#define MAX_UDIDS_PER_CALL 100000
#define MAX_TARGETS_READ 1000

/* POST /v1/commands: the store's half on a pool worker when there is one,
 * then post_commands_then on the loop (counts, pushes, the answer). The
 * devices' push targets are read on workers too, MAX_TARGETS_READ at a
 * time (a target is ~2 KB in memory): the first slice with the enqueue,
 * each further one in a job of its own, its pushes sent on the loop when
 * it is back, and the answer once the last one went. */
typedef struct {
    json_t *body; /* the request's JSON: |list| points into it */
    const char **list;
    esim_push_state *ps;
    push_read *targets; /* the devices |from| to |upto|, read on a worker */
    size_t n, from, upto;
    bool counted; /* esim_service_enqueued done */
    esim_cmd cmd;
    esim_enqueue_opts opts;
    char uuid[128];
} post_commands;

static void post_commands_free(post_commands *pc)
{
    esim_cmd_free(&pc->cmd);
    free(pc->list);
    free(pc->ps);
    free(pc->targets);
    json_decref(pc->body);
    free(pc);
}

/* The push targets of the devices |from| to |upto|, on a worker (NULL when
 * out of memory: pushed with push_device on the loop). */
static void post_commands_read(api_request *r, void *arg)
{
    post_commands *pc = arg;
    free(pc->targets);
    pc->targets = push_read_targets(r->st, pc->list + pc->from, pc->upto - pc->from);
}

static void post_commands_then(api_request *r, void *arg)
{
    post_commands *pc = arg;
    if (r->stopped && pc->counted) {
        /* Queued, but the service stops before the last pushes: the
         * devices get the command at their next check-in. */
        for (size_t i = pc->from; pc->opts.push && i < pc->n; i++)
            pc->ps[i] = ESIM_PUSH_PENDING;
        pc->from = pc->upto = pc->n;
    } else if (api_job_answered(r)) {
        post_commands_free(pc);
        return;
    }
    if (!pc->counted) {
        esim_service_enqueued(r->svc, pc->list, pc->n);
        for (size_t i = 0; i < pc->n; i++)
            pc->ps[i] = ESIM_PUSH_SKIPPED;
        pc->counted = true;
    }
    /* One push per device for the whole call: a push only says "check in";
     * the device then drains its queue in one session. */
    for (size_t i = pc->from; pc->opts.push && i < pc->upto; i++) {
        esim_push_state ps = ESIM_PUSH_SKIPPED;
        if (pc->targets)
            push_read_send(r->svc, &pc->targets[i - pc->from], &ps, NULL, NULL);
        else
            push_device(r->svc, pc->list[i], &ps, NULL, NULL);
        pc->ps[i] = ps;
    }
    if (pc->opts.push && pc->upto < pc->n) {
        pc->from = pc->upto;
        pc->upto = pc->from + MAX_TARGETS_READ < pc->n ? pc->from + MAX_TARGETS_READ : pc->n;
        api_store_job(r, post_commands_read, post_commands_then, pc);
        return;
    }
    api_reply_json(r, 200,
                   json_pack("{s:s,s:s,s:o}", "command_uuid", pc->uuid, "request_type",
                             pc->cmd.request_type, "devices",
                             push_states_json(pc->list, pc->ps, pc->n)));
    post_commands_free(pc);
}

static void h_post_commands(api_request *r)
{
    post_commands *pc = calloc(1, sizeof *pc);
    if (!pc) {
        api_error(r, 500, NULL, "out of memory");
        return;
    }
    json_t *body = pc->body = api_body_json(r);
    if (!body) {
        free(pc);
        return;
    }
    static const char *const keys[] = {"udids",        "command", "priority",
                                       "expires_in_s", "push",    NULL};
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        bool ok = false;
        for (size_t i = 0; keys[i] && !ok; i++)
            ok = strcmp(keys[i], key) == 0;
        if (!ok) {
            api_error(r, 400, key,
                      "%s: unknown key; known: udids, command, priority, expires_in_s, push", key);
            goto fail;
        }
    }
    json_t *udids = json_object_get(body, "udids");
    json_t *prio = json_object_get(body, "priority");
    json_t *exp = json_object_get(body, "expires_in_s");
    json_t *push = json_object_get(body, "push");
    size_t n = pc->n = json_array_size(udids);
    esim_error e = {{0}};
    char field[96];

    if (!json_is_array(udids) || n == 0) {
        api_error(r, 400, "udids", "udids: must be a non-empty array of device UDIDs");
        goto fail;
    }
    if (n > MAX_UDIDS_PER_CALL) {
        api_error(r, 400, "udids", "udids: at most %d devices per call", MAX_UDIDS_PER_CALL);
        goto fail;
    }
    if (prio && (!json_is_integer(prio) || json_integer_value(prio) < -1000 ||
                 json_integer_value(prio) > 1000)) {
        api_error(r, 400, "priority", "priority: must be an integer from -1000 to 1000");
        goto fail;
    }
    if (exp && (!json_is_integer(exp) || json_integer_value(exp) <= 0 ||
                json_integer_value(exp) > 10LL * 365 * 24 * 3600)) {
        api_error(r, 400, "expires_in_s",
                  "expires_in_s: must be a positive number of seconds (at most 10 years)");
        goto fail;
    }
    if (push && !json_is_boolean(push)) {
        api_error(r, 400, "push", "push: must be true or false");
        goto fail;
    }
    pc->list = calloc(n, sizeof *pc->list);
    pc->ps = calloc(n, sizeof *pc->ps);
    if (!pc->list || !pc->ps) {
        api_error(r, 500, NULL, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *u = json_array_get(udids, i);
        if (!json_is_string(u) || esim_udid_validate(json_string_value(u), &e) != ESIM_OK) {
            snprintf(field, sizeof field, "udids[%zu]", i);
            api_error(r, 400, field, "%s: %s", field,
                      json_is_string(u) ? e.msg : "must be a string (a device UDID)");
            goto fail;
        }
        pc->list[i] = json_string_value(u);
    }
    if (api_compose_command(json_object_get(body, "command"), &pc->cmd, field, &e) != ESIM_OK) {
        api_error(r, 400, field, "%s", e.msg);
        goto fail;
    }
    pc->opts = (esim_enqueue_opts){
        .priority = prio ? (int)json_integer_value(prio) : 0,
        .expires_at = exp ? esim_now_ms() + (int64_t)json_integer_value(exp) * 1000 : 0,
        .push = push ? json_is_true(push) : true,
    };
    esim_err rc = svc_enqueue_store(r->svc, r->st, pc->cmd.body.data, pc->cmd.body.len, pc->list, n,
                                    &pc->opts, pc->uuid, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), rc == ESIM_ENOTFOUND || rc == ESIM_ESTATE ? "udids" : NULL,
                  "%s", e.msg);
        goto fail;
    }
    /* Without a pool (SQLite) every push reads its target on the loop, as
     * push_device does; with one, the first slice is read here, on the
     * worker's connection. */
    pc->upto = pc->opts.push ? n : 0;
    if (r->on_worker && pc->opts.push) {
        pc->upto = n < MAX_TARGETS_READ ? n : MAX_TARGETS_READ;
        post_commands_read(r, pc);
    }
    if (r->on_worker) {
        r->then = post_commands_then;
        r->then_arg = pc;
    } else {
        post_commands_then(r, pc);
    }
    return;
fail:
    post_commands_free(pc);
}

/* ---- NanoMDM's enqueue and push ------------------------------------------------------
 * Answers in NanoMDM's shape (its api.APIResult): status.{id} carries
 * push_result (the apns-id of a push handed to APNs), push_error or
 * command_error; the HTTP code is 200 with no error, 207 when some ids
 * failed and 500 when all did (or the store failed). esim-mdm's own keys
 * (status.{id}.push, devices) stay beside them. */

/* A user-channel enrollment ID (NanoMDM's "UDID:UserID"). */
static bool user_channel_id(const char *id)
{
    return strchr(id, ':') != NULL;
}

#define USER_CHANNEL_WORDS                                                                         \
    "user-channel enrollment IDs (UDID:UserID) are not managed: esim-mdm manages the device "      \
    "channel only (UserAuthenticate is answered 410)"

static bool push_state_failed(esim_push_state ps)
{
    return ps == ESIM_PUSH_NO_TOKEN || ps == ESIM_PUSH_DEAD_TOKEN || ps == ESIM_PUSH_FAILED;
}

static const char *push_error_words(esim_push_state ps)
{
    switch (ps) {
    case ESIM_PUSH_NO_TOKEN:
        return "no push token: the device has not sent TokenUpdate since it enrolled";
    case ESIM_PUSH_DEAD_TOKEN:
        return "APNs said the device's push token is dead; it needs a new TokenUpdate";
    default:
        return "the APNs client refused the push";
    }
}

/* One device's entry of status: {"push": state, "push_result" | "push_error"}. */
static json_t *nano_push_status(esim_push_state ps, const char *apns_id, const char *why)
{
    json_t *o = json_pack("{s:s}", "push", esim_push_state_name(ps));
    if (ps == ESIM_PUSH_SENT && apns_id && *apns_id)
        json_object_set_new(o, "push_result", json_string(apns_id));
    else if (push_state_failed(ps))
        json_object_set_new(o, "push_error", json_string(why && *why ? why : push_error_words(ps)));
    return o;
}

static int nano_code(size_t failed, size_t n)
{
    return failed == 0 ? 200 : failed < n ? 207 : 500;
}

/* A whole call refused before anything was stored: esim-mdm's error object
 * and NanoMDM's top-level |key| ("command_error", "push_error"). */
static void nano_refuse(api_request *r, int code, const char *field, const char *key,
                        json_t *status, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void nano_refuse(api_request *r, int code, const char *field, const char *key,
                        json_t *status, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    svc_utf8_sanitize(msg);
    json_t *e = json_pack("{s:i,s:s}", "status", code, "message", msg);
    if (e && field)
        json_object_set_new(e, "field", json_string(field));
    json_t *body = json_pack("{s:o,s:s}", "error", e, key, msg);
    if (body && status)
        json_object_set_new(body, "status", status);
    else
        json_decref(status);
    api_reply_json(r, code, body);
}

/* Splits the path's ids; user-channel ids are kept (the caller decides).
 * 0 after answering 400. */
static size_t split_ids(api_request *r, const char *key, const char *list, char *buf,
                        size_t buf_len, const char **out, size_t max)
{
    if (strlen(list) >= buf_len) {
        nano_refuse(r, 400, "udids", key, NULL, "too many devices in one request");
        return 0;
    }
    strcpy(buf, list);
    size_t n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        esim_error e;
        if (!user_channel_id(tok) && esim_udid_validate(tok, &e) != ESIM_OK) {
            nano_refuse(r, 400, "udids", key, NULL, "%s", e.msg);
            return 0;
        }
        if (n == max) {
            nano_refuse(r, 400, "udids", key, NULL, "at most %zu devices per request", max);
            return 0;
        }
        out[n++] = tok;
    }
    if (n == 0)
        nano_refuse(r, 400, "udids", key, NULL, "name at least one device");
    return n;
}

/* /v1/enqueue/{id,id,...} and /v1/push/{id,id,...}: what the loop copies
 * for the worker (the ids, the body's place), what the worker leaves for
 * the loop (the enqueue's outcome, the push targets). */
typedef struct {
    char buf[8192];
    const char *udids[256];
    size_t n;
    const unsigned char *body; /* the request's: it lives until the answer */
    size_t len;
    bool push;
    esim_err rc;
    esim_error e;
    esim_cmd_parsed parsed;
    char uuid[128];
    push_read *targets; /* NULL: out of memory, read on the loop */
} nano_call;

static void nano_call_free(nano_call *nc)
{
    esim_cmd_parsed_free(&nc->parsed);
    free(nc->targets);
    free(nc);
}

/* One device's push with its target read on the worker, as push_device. */
static esim_err nano_push_one(api_request *r, nano_call *nc, size_t i, esim_push_state *ps,
                              char apns_id[ESIM_UUID_LEN + 1], esim_error *e)
{
    if (nc->targets)
        return push_read_send(r->svc, &nc->targets[i], ps, apns_id, e);
    return push_device(r->svc, nc->udids[i], ps, apns_id, e);
}

static void enqueue_raw_run(api_request *r, void *arg)
{
    nano_call *nc = arg;
    esim_parse_limits limits = {r->svc->cfg.max_body, r->svc->cfg.max_depth};
    esim_enqueue_opts opts = {.push = false}; /* pushed on the loop, to name each push */
    nc->rc = esim_cmd_parse(nc->body, nc->len, &limits, &nc->parsed, &nc->e);
    if (nc->rc == ESIM_OK)
        nc->rc = svc_enqueue_store(r->svc, r->st, nc->body, nc->len, nc->udids, nc->n, &opts,
                                   nc->uuid, &nc->e);
    if (nc->rc == ESIM_OK && nc->push)
        nc->targets = push_read_targets(r->st, nc->udids, nc->n);
}

static void enqueue_raw_then(api_request *r, void *arg)
{
    nano_call *nc = arg;
    if (api_job_answered(r)) {
        nano_call_free(nc);
        return;
    }
    esim_err rc = nc->rc;
    if (rc != ESIM_OK) {
        if (rc == ESIM_ESTORE)
            svc_store_failed(r->svc, NULL);
        nano_refuse(r, api_status_for(rc == ESIM_ETOOBIG ? ESIM_EINVAL : rc),
                    rc == ESIM_ENOTFOUND || rc == ESIM_ESTATE ? "udids" : "body", "command_error",
                    NULL, "%s", nc->e.msg);
        nano_call_free(nc);
        return;
    }
    esim_enqueue_opts opts = {.push = false};
    svc_enqueue_after(r->svc, nc->udids, nc->n, &opts, NULL, NULL);
    esim_push_state ps[256];
    json_t *status = json_object();
    size_t failed = 0;
    for (size_t i = 0; i < nc->n; i++) {
        char apns_id[ESIM_UUID_LEN + 1] = "";
        esim_error pe = {{0}};
        ps[i] = ESIM_PUSH_SKIPPED;
        if (nc->push && nano_push_one(r, nc, i, &ps[i], apns_id, &pe) != ESIM_OK)
            ps[i] = ESIM_PUSH_FAILED;
        failed += push_state_failed(ps[i]);
        json_object_set_new(status, nc->udids[i], nano_push_status(ps[i], apns_id, pe.msg));
    }
    api_reply_json(r, nano_code(failed, nc->n),
                   json_pack("{s:s,s:s,s:b,s:o,s:o}", "command_uuid", nc->uuid, "request_type",
                             nc->parsed.request_type, "no_push", !nc->push, "status", status,
                             "devices", push_states_json(nc->udids, ps, nc->n)));
    nano_call_free(nc);
}

/* /v1/enqueue/{id,id,...}, any method as NanoMDM takes it: the body is a
 * whole command plist, so existing MDM tooling can drive esim-mdm.
 * ?nopush=1 skips the push. All or nothing: a refused call stores and
 * pushes nothing. The checks here; the enqueue and the push targets'
 * reads on a store pool worker; the pushes and the answer on the loop. */
static void h_enqueue_raw(api_request *r)
{
    nano_call *nc = calloc(1, sizeof *nc);
    if (!nc) {
        nano_refuse(r, 500, NULL, "command_error", NULL, "out of memory");
        return;
    }
    size_t n = nc->n =
        split_ids(r, "command_error", r->params[0], nc->buf, sizeof nc->buf, nc->udids, 256);
    if (n == 0) {
        nano_call_free(nc);
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (user_channel_id(nc->udids[i])) {
            json_t *status =
                json_pack("{s:{s:s}}", nc->udids[i], "command_error", USER_CHANNEL_WORDS);
            nano_refuse(r, 400, "udids", "command_error", status, "%s: %s", nc->udids[i],
                        USER_CHANNEL_WORDS);
            nano_call_free(nc);
            return;
        }
    nc->body = http_body(r->req, &nc->len);
    if (!nc->body) {
        nano_refuse(r, 400, "body", "command_error", NULL,
                    "the body must be a command plist (CommandUUID, Command.RequestType)");
        nano_call_free(nc);
        return;
    }
    const char *nopush = query_get(r, "nopush");
    nc->push = !(nopush && (strcmp(nopush, "1") == 0 || strcmp(nopush, "true") == 0));
    api_store_job(r, enqueue_raw_run, enqueue_raw_then, nc);
}

/* GET /v1/commands/{uuid}?after=UDID&limit=N: counts by state for every
 * device, and the entries of one page of devices (udid order). */
static void h_get_command(api_request *r)
{
    store *st = r->st;
    const char *lim = query_get(r, "limit");
    long limit = lim ? strtol(lim, NULL, 10) : 1000;
    if (limit < 0 || limit > 10000) {
        api_error(r, 400, "limit", "limit: from 0 (counts only) to 10000");
        return;
    }
    store_command_info info;
    store_queue_entry *entries = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc = esim_store_command_get(st, r->params[0], query_get(r, "after"), (size_t)limit,
                                         &info, &entries, &n, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), rc == ESIM_ENOTFOUND ? "command_uuid" : NULL, "%s", e.msg);
        return;
    }
    json_t *devices = json_object();
    for (size_t i = 0; i < n; i++)
        json_object_set_new(devices, entries[i].udid, entry_json(&entries[i], false, true));
    json_t *next = limit > 0 && n == (size_t)limit ? json_string(entries[n - 1].udid) : json_null();
    esim_store_queue_entries_free(entries, n);
    json_t *counts = json_object();
    for (int q = 0; q <= STORE_Q_CANCELED; q++)
        json_object_set_new(counts, esim_store_qstate_name((store_qstate)q),
                            json_integer((json_int_t)info.by_state[q]));
    api_reply_json(r, 200,
                   json_pack("{s:s,s:s,s:i,s:o,s:o,s:I,s:o,s:o,s:o}", "command_uuid", info.uuid,
                             "request_type", info.request_type, "priority", info.priority,
                             "created_at", ts(info.created_at), "expires_at", ts(info.expires_at),
                             "device_count", (json_int_t)info.devices, "counts", counts, "devices",
                             devices, "next_after", next));
}

/* One CSV field: quoted when it holds a comma, quote or line break, and
 * with a leading quote mark when a spreadsheet would read it as a formula
 * (device names come from devices). */
static void csv_field(esim_buf *b, const char *v, bool last)
{
    bool formula =
        v[0] == '=' || v[0] == '+' || v[0] == '-' || v[0] == '@' || v[0] == '\t' || v[0] == '\r';
    bool quote = formula || strpbrk(v, ",\"\r\n") != NULL;
    if (quote)
        esim_buf_append_str(b, "\"");
    if (formula)
        esim_buf_append_str(b, "'");
    for (const char *p = v; *p; p++) {
        if (*p == '"')
            esim_buf_append_str(b, "\"\"");
        else
            esim_buf_append(b, p, 1);
    }
    if (quote)
        esim_buf_append_str(b, "\"");
    esim_buf_append_str(b, last ? "\r\n" : ",");
}

static void csv_time(esim_buf *b, int64_t ms)
{
    json_t *t = ts(ms);
    csv_field(b, json_is_string(t) ? json_string_value(t) : "", false);
    json_decref(t);
}

/* GET /v1/devices?format=csv: the whole inventory as CSV (RFC 4180, a
 * header line, udid order), read from the store a page at a time. */
static void devices_csv(api_request *r)
{
    esim_buf b = {0};
    esim_buf_append_str(&b, "udid,platform,enrolled,serial_number,product_name,model,device_name,"
                            "os_version,build_version,imei,eid,push_state,enrolled_at,"
                            "checked_out_at,last_seen_at\r\n");
    char after[65] = "";
    for (;;) {
        store_device *list = NULL;
        size_t n = 0;
        esim_error e = {{0}};
        esim_err rc = esim_store_device_list(r->st, after, 1000, &list, &n, &e);
        if (rc != ESIM_OK) {
            esim_buf_free(&b);
            api_error(r, api_status_for(rc), NULL, "%s", e.msg);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            const store_device *d = &list[i];
            csv_field(&b, d->udid, false);
            csv_field(&b, d->platform[0] ? d->platform : "apple", false);
            csv_field(&b, d->enrolled ? "true" : "false", false);
            csv_field(&b, d->serial_number, false);
            csv_field(&b, d->product_name, false);
            csv_field(&b, d->model, false);
            csv_field(&b, d->device_name, false);
            csv_field(&b, d->os_version, false);
            csv_field(&b, d->build_version, false);
            csv_field(&b, d->imei, false);
            csv_field(&b, d->eid, false);
            csv_field(&b, esim_store_push_state_name(d->push_state), false);
            csv_time(&b, d->enrolled_at);
            csv_time(&b, d->checked_out_at);
            json_t *t = ts(d->last_seen_at);
            csv_field(&b, json_is_string(t) ? json_string_value(t) : "", true);
            json_decref(t);
        }
        if (n)
            snprintf(after, sizeof after, "%s", list[n - 1].udid);
        free(list);
        if (n < 1000)
            break;
    }
    api_add_header(r, "Content-Disposition", "attachment; filename=\"esim-mdm-devices.csv\"");
    api_send(r, 200, "text/csv; charset=utf-8", b.data, b.len);
    esim_buf_free(&b);
}

static void h_list_devices(api_request *r)
{
    const char *format = query_get(r, "format");
    if (format && strcmp(format, "csv") == 0) {
        devices_csv(r);
        return;
    }
    if (format && strcmp(format, "json") != 0) {
        api_error(r, 400, "format", "format: json (the default) or csv");
        return;
    }
    const char *after = query_get(r, "after");
    const char *lim = query_get(r, "limit");
    long limit = lim ? strtol(lim, NULL, 10) : 100;
    if (limit < 1 || limit > 1000) {
        api_error(r, 400, "limit", "limit: must be from 1 to 1000");
        return;
    }
    store_device *list = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    const char *q = query_get(r, "q");
    esim_err rc = esim_store_device_search(r->st, q, after, (size_t)limit, &list, &n, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), NULL, "%s", e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, device_json(&list[i]));
    json_t *next = n == (size_t)limit ? json_string(list[n - 1].udid) : json_null();
    free(list);
    api_reply_json(r, 200, json_pack("{s:o,s:o}", "devices", arr, "next_after", next));
}

static void h_get_device(api_request *r)
{
    store_device d;
    esim_error e = {{0}};
    esim_err rc = esim_store_device_get(r->st, r->params[0], &d, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), rc == ESIM_ENOTFOUND ? "udid" : NULL, "%s", e.msg);
        return;
    }
    api_reply_json(r, 200, device_json(&d));
}

static void h_device_queue(api_request *r)
{
    const char *all = query_get(r, "all");
    bool with_done = all && (strcmp(all, "1") == 0 || strcmp(all, "true") == 0);
    store_queue_entry *entries = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc = esim_store_device_queue(r->st, r->params[0], with_done, &entries, &n, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), rc == ESIM_ENOTFOUND ? "udid" : NULL, "%s", e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, entry_json(&entries[i], false, false));
    esim_store_queue_entries_free(entries, n);
    api_reply_json(r, 200, json_pack("{s:s,s:o}", "udid", r->params[0], "queue", arr));
}

/* GET /v1/devices/{udid}/events?after=ID&limit=N: the device's ledger. */
static void h_device_events(api_request *r)
{
    const char *after_s = query_get(r, "after");
    const char *lim = query_get(r, "limit");
    long long after = after_s ? strtoll(after_s, NULL, 10) : 0;
    long limit = lim ? strtol(lim, NULL, 10) : 100;
    if (limit < 1 || limit > 1000 || after < 0) {
        api_error(r, 400, lim ? "limit" : "after",
                  "limit: 1 to 1000; after: an event id from a previous page");
        return;
    }
    store_device d;
    esim_error e = {{0}};
    esim_err rc = esim_store_device_get(r->st, r->params[0], &d, &e);
    store_event *ev = NULL;
    size_t n = 0;
    if (rc == ESIM_OK)
        rc = esim_store_events_list(r->st, r->params[0], after, (size_t)limit, &ev, &n, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), rc == ESIM_ENOTFOUND ? "udid" : NULL, "%s", e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:I,s:o,s:s,s:o,s:o}", "id", (json_int_t)ev[i].id, "at",
                              ts(ev[i].at), "kind", ev[i].kind, "command_uuid",
                              str_or_null(ev[i].command_uuid), "detail", str_or_null(ev[i].detail));
        esim_buf b64 = {0};
        if (ev[i].raw.len && esim_base64_encode(ev[i].raw.data, ev[i].raw.len, &b64) == ESIM_OK)
            json_object_set_new(o, "raw", json_string((const char *)b64.data));
        esim_buf_free(&b64);
        json_array_append_new(arr, o);
    }
    json_t *next = n == (size_t)limit ? json_integer((json_int_t)ev[n - 1].id) : json_null();
    esim_store_events_free(ev, n);
    api_reply_json(
        r, 200,
        json_pack("{s:s,s:o,s:o}", "udid", r->params[0], "events", arr, "next_after", next));
}

static void h_cancel(api_request *r)
{
    esim_error e = {{0}};
    esim_err rc = esim_store_queue_cancel(r->st, r->params[0], r->params[1], esim_now_ms(), &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), rc == ESIM_ENOTFOUND ? "command_uuid" : NULL, "%s", e.msg);
        return;
    }
    api_reply_json(r, 200,
                   json_pack("{s:s,s:s,s:s}", "udid", r->params[0], "command_uuid", r->params[1],
                             "state", "canceled"));
}

/* DELETE /v1/devices/{udid}: the device is retired (store.h,
 * esim_store_device_retire); its record and ledger stay. */
static void h_retire(api_request *r)
{
    char detail[128];
    snprintf(detail, sizeof detail, "retired through the API by key '%s'", r->who);
    esim_error e = {{0}};
    esim_err rc = esim_store_device_retire(r->st, r->params[0], detail, esim_now_ms(), &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), rc == ESIM_ENOTFOUND ? "udid" : NULL, "%s", e.msg);
        return;
    }
    api_reply_json(
        r, 200,
        json_pack("{s:s,s:s,s:b}", "udid", r->params[0], "state", "retired", "enrolled", 0));
}

/* GET /v1/audit?after=ID&limit=N: the audit log of admin actions, oldest first. */
static void h_audit(api_request *r)
{
    const char *after_s = query_get(r, "after");
    const char *lim = query_get(r, "limit");
    char *end = NULL;
    long long after = after_s ? strtoll(after_s, &end, 10) : 0;
    if (after_s && (*after_s == '\0' || *end != '\0' || after < 0)) {
        api_error(r, 400, "after", "after: an audit entry id from a previous page");
        return;
    }
    long limit = lim ? strtol(lim, &end, 10) : 100;
    if (lim && (*lim == '\0' || *end != '\0' || limit < 1 || limit > 1000)) {
        api_error(r, 400, "limit", "limit: from 1 to 1000");
        return;
    }
    store_audit *list = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc = esim_store_audit_list(r->st, after, (size_t)limit, &list, &n, &e);
    if (rc != ESIM_OK) {
        api_error(r, api_status_for(rc), NULL, "%s", e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            arr, json_pack("{s:I,s:o,s:s,s:s,s:s,s:s,s:i,s:o}", "id", (json_int_t)list[i].id, "at",
                           ts(list[i].at), "who", list[i].who, "role", list[i].role, "method",
                           list[i].method, "target", list[i].target, "status", list[i].status,
                           "detail", str_or_null(list[i].detail)));
    json_t *next = n == (size_t)limit ? json_integer((json_int_t)list[n - 1].id) : json_null();
    free(list);
    api_reply_json(r, 200, json_pack("{s:o,s:o}", "entries", arr, "next_after", next));
}

static void push_run(api_request *r, void *arg)
{
    nano_call *nc = arg;
    nc->targets = push_read_targets(r->st, nc->udids, nc->n);
}

static void push_then(api_request *r, void *arg)
{
    nano_call *nc = arg;
    if (api_job_answered(r)) {
        nano_call_free(nc);
        return;
    }
    json_t *devices = json_object(), *status = json_object();
    size_t failed = 0;
    for (size_t i = 0; i < nc->n; i++) {
        const char *udid = nc->udids[i];
        esim_push_state ps = ESIM_PUSH_FAILED;
        char apns_id[ESIM_UUID_LEN + 1] = "";
        esim_error e = {{0}};
        esim_err rc = user_channel_id(udid)
                          ? esim_fail(&e, ESIM_ENOTFOUND, "%s", USER_CHANNEL_WORDS)
                          : nano_push_one(r, nc, i, &ps, apns_id, &e);
        if (rc != ESIM_OK) {
            failed++;
            json_object_set_new(devices, udid,
                                json_pack("{s:s,s:s}", "push", "failed", "error", e.msg));
            json_object_set_new(status, udid,
                                json_pack("{s:s,s:s}", "push", "failed", "push_error", e.msg));
            continue;
        }
        failed += push_state_failed(ps);
        json_object_set_new(devices, udid, json_pack("{s:s}", "push", esim_push_state_name(ps)));
        json_object_set_new(status, udid, nano_push_status(ps, apns_id, e.msg));
    }
    api_reply_json(r, nano_code(failed, nc->n),
                   json_pack("{s:o,s:o}", "status", status, "devices", devices));
    nano_call_free(nc);
}

/* /v1/push/{id,id,...}, any method: wakes the devices now. Their push
 * targets are read on a store pool worker, the pushes go out on the loop. */
static void h_push(api_request *r)
{
    nano_call *nc = calloc(1, sizeof *nc);
    if (!nc) {
        nano_refuse(r, 500, NULL, "push_error", NULL, "out of memory");
        return;
    }
    nc->n = split_ids(r, "push_error", r->params[0], nc->buf, sizeof nc->buf, nc->udids, 256);
    if (nc->n == 0) {
        nano_call_free(nc);
        return;
    }
    api_store_job(r, push_run, push_then, nc);
}

/* ---- the route table: one line per endpoint ------------------------------------------------ */

static const api_route routes[] = {
    {EVHTTP_REQ_GET, "/healthz", h_healthz, false, false},
    {EVHTTP_REQ_GET, "/metrics", h_metrics, false, false},
    {EVHTTP_REQ_POST, "/v1/commands", h_post_commands, true, true},
    {EVHTTP_REQ_GET, "/v1/commands/:", h_get_command, true, true},
    {API_ANY_METHOD, "/v1/enqueue/:", h_enqueue_raw, true, false}, /* NanoMDM takes any method */
    {EVHTTP_REQ_GET, "/v1/devices", h_list_devices, true, true},
    {EVHTTP_REQ_GET, "/v1/devices/:", h_get_device, true, true},
    {EVHTTP_REQ_DELETE, "/v1/devices/:", h_retire, true, true},
    {EVHTTP_REQ_GET, "/v1/devices/:/queue", h_device_queue, true, true},
    {EVHTTP_REQ_GET, "/v1/devices/:/events", h_device_events, true, true},
    {EVHTTP_REQ_DELETE, "/v1/devices/:/queue/:", h_cancel, true, true},
    {EVHTTP_REQ_GET, "/v1/audit", h_audit, true, true},
    {API_ANY_METHOD, "/v1/push/:", h_push, true, false},
    /* NanoMDM's other endpoints (nanomdm.c) */
    {EVHTTP_REQ_GET, "/version", nano_version, false, false},
    {EVHTTP_REQ_POST | EVHTTP_REQ_PUT, "/migration", nano_migration, true, false},
    {EVHTTP_REQ_GET, "/v1/pushcert", nano_pushcert_get, true, false},
    {EVHTTP_REQ_PUT, "/v1/pushcert", nano_pushcert_put, true, false},
};

/* Matches |path| against |pattern|, decoding ':' segments into |r|. |decoded|
 * holds the decoded copies (freed by the caller). */
static bool route_match(const char *pattern, const char *path, api_request *r, char **decoded)
{
    r->n_params = 0;
    const char *p = pattern, *s = path;
    while (*p && *s) {
        if (*p != '/' || *s != '/')
            return false;
        p++;
        s++;
        const char *pe = strchr(p, '/'), *se = strchr(s, '/');
        size_t pl = pe ? (size_t)(pe - p) : strlen(p), sl = se ? (size_t)(se - s) : strlen(s);
        if (pl == 1 && *p == ':') {
            if (sl == 0 || r->n_params == API_MAX_PARAMS)
                return false;
            char *seg = strndup(s, sl);
            char *dec = seg ? evhttp_uridecode(seg, 0, NULL) : NULL;
            free(seg);
            if (!dec)
                return false;
            decoded[r->n_params] = dec;
            r->params[r->n_params++] = dec;
        } else if (pl != sl || strncmp(p, s, pl) != 0) {
            return false;
        }
        p += pl;
        s += sl;
    }
    return *p == '\0' && *s == '\0';
}

/* The name a route parameter goes by in errors: from the segment before it. */
static const char *param_field(const char *pattern, size_t index)
{
    static const struct {
        const char *segment, *field;
    } names[] = {
        {"devices", "udid"},       {"commands", "command_uuid"},
        {"queue", "command_uuid"}, {"enqueue", "udids"},
        {"push", "udids"},         {"campaigns", "campaign_id"},
        {"groups", "group"},
    };
    const char *seg = NULL;
    size_t seg_len = 0, seen = 0;
    for (const char *p = pattern; *p; p++) {
        if (*p != '/')
            continue;
        const char *next = p + 1;
        if (*next == ':') {
            if (seen++ == index)
                break;
            continue;
        }
        seg = next;
        const char *end = strchr(next, '/');
        seg_len = end ? (size_t)(end - next) : strlen(next);
    }
    for (size_t i = 0; seg && i < sizeof names / sizeof names[0]; i++)
        if (strlen(names[i].segment) == seg_len && strncmp(names[i].segment, seg, seg_len) == 0)
            return names[i].field;
    return "path";
}

/* Route parameters and the query must be UTF-8 (every answer is JSON):
 * false after answering 400 naming the field. */
static bool text_valid(api_request *r, const char *pattern)
{
    for (size_t i = 0; i < r->n_params; i++)
        if (!svc_utf8_valid(r->params[i])) {
            const char *field = param_field(pattern, i);
            api_error(r, 400, field, "%s: not valid UTF-8 text", field);
            return false;
        }
    if (!r->query)
        return true;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, r->query, next)
    {
        if (!svc_utf8_valid(kv->key)) {
            api_error(r, 400, "query", "query: a parameter name is not valid UTF-8 text");
            return false;
        }
        if (!svc_utf8_valid(kv->value)) {
            api_error(r, 400, kv->key, "%s: not valid UTF-8 text", kv->key);
            return false;
        }
    }
    return true;
}

/* 405 for |path|, which exists: the methods it takes go in the Allow
 * header and the message. */
static void method_not_allowed(api_request *r, const char *path, const char *method_name)
{
    static const struct {
        enum evhttp_cmd_type cmd;
        const char *word;
    } names[] = {{EVHTTP_REQ_GET, "GET"},
                 {EVHTTP_REQ_POST, "POST"},
                 {EVHTTP_REQ_PUT, "PUT"},
                 {EVHTTP_REQ_DELETE, "DELETE"},
                 {EVHTTP_REQ_PATCH, "PATCH"}};
    unsigned mask = 0;
    size_t n_table = sizeof routes / sizeof routes[0];
    for (size_t i = 0; i < n_table + r->svc->n_routes; i++) {
        char *decoded[API_MAX_PARAMS] = {0};
        api_request probe = {.svc = r->svc, .req = r->req};
        const char *pattern = i < n_table ? routes[i].pattern : r->svc->routes[i - n_table].pattern;
        if (route_match(pattern, path, &probe, decoded))
            mask |= i < n_table ? (unsigned)routes[i].method
                                : (unsigned)r->svc->routes[i - n_table].method;
        for (size_t k = 0; k < API_MAX_PARAMS; k++)
            free(decoded[k]);
    }
    char allow[64] = "";
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (mask & (unsigned)names[i].cmd)
            snprintf(allow + strlen(allow), sizeof allow - strlen(allow), "%s%s",
                     allow[0] ? ", " : "", names[i].word);
    if (allow[0])
        esim_api_add_header(r, "Allow", allow);
    api_error(r, 405, NULL, "%s is not allowed on %s: use %s", method_name, path,
              allow[0] ? allow : "another method");
}

/* ---- admin requests on the store pool ----------------------------------------------
 * With PostgreSQL and a store pool, a route marked |pooled| runs on a pool
 * worker with the worker's connection (as the device path's operations
 * do, mdm.c), so a slow or blocked admin query holds a worker, not the
 * loop, and never the other devices' check-ins. Its answer is held in the
 * request and given on the loop (api_call_done), where the audit entry is
 * written after it as before. Without a pool the same handler runs on the
 * loop at once. */
typedef struct {
    pool_job job; /* first: the pool's view of it */
    api_request r;
    api_handler fn;
    const svc_route *module;                    /* a module's store route instead of |fn| */
    void (*job_run)(api_request *r, void *arg); /* api_store_job's, instead of both */
    bool handed;                                /* with api_store_job's job */
    struct evkeyvalq query;
    char *decoded[API_MAX_PARAMS];
    const char *method_name, *path;
} api_call;

static void api_call_free(api_call *c)
{
    evhttp_clear_headers(&c->query);
    for (size_t k = 0; k < API_MAX_PARAMS; k++)
        free(c->decoded[k]);
    esim_buf_free(&c->r.held.body);
    free(c);
}

static void send_held(esim_service *svc, api_request *r);

/* On a worker: the audit entry of |c|'s held answer, on the worker's
 * connection; r.audited stays set when it could not be written (the loop
 * writes it then). */
static void audit_in_job(store *st, api_call *c)
{
    c->r.status = c->r.held.code;
    if (access_audit_add(st, &c->r, c->method_name, c->path) == ESIM_OK)
        c->r.audited = false;
}

/* On a worker: the audit entry of an answer held on the loop (r->hold). */
static void audit_run(store *st, pool_job *pj)
{
    audit_in_job(st, (api_call *)pj);
}

/* Back on the loop: the answer goes once its entry is in; written here
 * when the job could not write it (a store failure, counted, or a job that
 * never ran). */
static void audit_done(esim_service *svc, pool_job *pj)
{
    api_call *c = (api_call *)pj;
    if (c->r.audited)
        access_audit_write(svc, &c->r, c->method_name, c->path);
    send_held(svc, &c->r);
    api_call_free(c);
}

/* What follows every admin answer: the audit entry, then the request's
 * memory. An answer held on the loop (r->hold) waits for its entry,
 * written by a job on the pool. */
static void api_call_end(esim_service *svc, api_call *c)
{
    svc->audit = NULL;
    if (c->r.hold && c->r.held.set) {
        c->r.status = c->r.held.code;
        if (c->r.audited) {
            c->job = (pool_job){.run = audit_run, .done = audit_done, .admin = true};
            pool_submit(svc, &c->job);
            return;
        }
        send_held(svc, &c->r);
    }
    if (c->r.audited)
        access_audit_write(svc, &c->r, c->method_name, c->path);
    api_call_free(c);
}

static void api_call_run(store *st, pool_job *pj)
{
    api_call *c = (api_call *)pj;
    c->r.st = st;
    c->r.on_worker = true;
    if (c->job_run)
        c->job_run(&c->r, c->r.then_arg);
    else if (c->module)
        c->module->fn(&c->r, c->module->arg);
    else
        c->fn(&c->r);
    c->r.on_worker = false;
    /* An answer held with nothing left for the loop to do but send it: its
     * audit entry is written here, in the change's own job, before the
     * answer goes (a /v1/audit read after it shows the entry), not on the
     * loop's connection. When a |then| follows, the loop may still change
     * the answer: the entry is written there, after it (api_call_end); so
     * it is when this fails. */
    if (c->r.audited && c->r.held.set && !c->r.then)
        audit_in_job(st, c);
}

/* The answer a worker held, given on the loop. */
static void send_held(esim_service *svc, api_request *r)
{
    for (size_t i = 0; i < r->held.n_headers; i++)
        evhttp_add_header(evhttp_request_get_output_headers(r->req), r->held.headers[i][0],
                          r->held.headers[i][1]);
    r->held.n_headers = 0;
    if (r->held.store_failed)
        svc_store_failed(svc, r->detail);
    r->held.store_failed = false;
    r->held.set = false;
    r->answered = true;
    http_reply(svc, r->req, r->held.route, r->held.code, r->held.type, r->held.body.data,
               r->held.body.len);
}

bool api_job_answered(const api_request *r)
{
    return r->held.set || r->stopped || r->answered;
}

/* A |then| that handed the request on: false. */
static bool call_then(api_request *r)
{
    api_call *c = (api_call *)((char *)r - offsetof(api_call, r));
    void (*then)(api_request *, void *) = r->then;
    r->then = NULL;
    c->handed = false;
    c->job_run = NULL;
    then(r, r->then_arg);
    return !c->handed;
}

static void api_call_done(esim_service *svc, pool_job *pj)
{
    api_call *c = (api_call *)pj;
    api_request *r = &c->r;
    r->st = svc->st;
    svc->audit = r;
    r->stopped = !pj->ran;
    if (r->then && !call_then(r)) {
        svc->audit = NULL;
        return; /* handed on: another job answers */
    }
    if (r->answered)
        ;
    else if (r->held.set) {
        if (!r->hold)
            send_held(svc, r); /* else api_call_end, after its audit entry */
    } else if (r->stopped)
        api_error(r, 503, NULL, "the service is stopping");
    else
        api_error(r, 500, NULL, "the request was not answered");
    api_call_end(svc, c);
}

void api_store_job(api_request *r, void (*run)(api_request *r, void *arg),
                   void (*then)(api_request *r, void *arg), void *arg)
{
    esim_service *svc = r->svc;
    api_call *c = (api_call *)((char *)r - offsetof(api_call, r));
    r->then = then;
    r->then_arg = arg;
    if (pool_on(svc)) {
        c->job_run = run;
        c->handed = true;
        c->job = (pool_job){.run = api_call_run, .done = api_call_done, .admin = true};
        svc->audit = NULL;
        pool_submit(svc, &c->job);
        return;
    }
    /* No pool: both at once, the answer of |run| held as on a worker. */
    r->on_worker = true;
    run(r, arg);
    r->on_worker = false;
    r->stopped = false;
    if (call_then(r) && !r->answered && r->held.set)
        send_held(svc, r);
}

void api_dispatch(esim_service *svc, struct evhttp_request *req)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    api_call *c = calloc(1, sizeof *c);
    if (!c) {
        http_reply(svc, req, M_ROUTE_API, 503, "text/plain", "out of memory\n", 14);
        return;
    }
    api_request *r = &c->r;
    *r = (api_request){.svc = svc, .req = req, .st = svc->st};
    TAILQ_INIT(&c->query);
    c->path = path;
    if (!path) {
        api_error(r, 400, NULL, "bad request target");
        api_call_end(svc, c);
        return;
    }
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    char **decoded = c->decoded;
    const api_route *hit = NULL;
    const svc_route *module_hit = NULL;
    bool path_known = false;
    size_t n_table = sizeof routes / sizeof routes[0];
    for (size_t i = 0; i < n_table + svc->n_routes && !hit && !module_hit; i++) {
        for (size_t k = 0; k < API_MAX_PARAMS; k++) {
            free(decoded[k]);
            decoded[k] = NULL;
        }
        const char *pattern = i < n_table ? routes[i].pattern : svc->routes[i - n_table].pattern;
        if (!route_match(pattern, path, r, decoded))
            continue;
        path_known = true;
        if (i < n_table && (routes[i].method & method) != 0)
            hit = &routes[i];
        else if (i >= n_table && svc->routes[i - n_table].method == method)
            module_hit = &svc->routes[i - n_table];
    }
    bool needs_token = (module_hit && !module_hit->public_route) || (hit && hit->needs_token);
    const char *method_name = c->method_name = access_method_name(method);
    svc->audit = r;
    if (!hit && !module_hit) {
        if (path_known)
            method_not_allowed(r, path, method_name);
        else
            api_error(r, 404, NULL, "no such endpoint: %s (see docs/api.md)", path);
    } else if (needs_token && !access_check_request(svc, r, method_name, path)) {
        /* answered: 401, 403 (audited) or 429 */
    } else {
        /* Every change made with a key is an admin action; reads are not. */
        r->audited = needs_token && ((method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) ||
                                     strncmp(path, "/v1/push/", 9) == 0);
        r->hold = r->audited && pool_on(svc);
        const char *q = evhttp_uri_get_query(uri);
        if (q && evhttp_parse_query_str(q, &c->query) == 0)
            r->query = &c->query;
        else if (q) {
            api_error(r, 400, NULL, "bad query string");
            hit = NULL;
            module_hit = NULL;
        }
        if ((hit && text_valid(r, hit->pattern)) ||
            (module_hit && module_hit->pooled && text_valid(r, module_hit->pattern))) {
            if ((hit ? hit->pooled : module_hit->pooled) && pool_on(svc)) {
                c->fn = hit ? hit->fn : NULL;
                c->module = hit ? NULL : module_hit;
                c->job.run = api_call_run;
                c->job.done = api_call_done;
                c->job.admin = true;
                svc->audit = NULL;
                pool_submit(svc, &c->job);
                return; /* api_call_done answers */
            }
            if (hit)
                hit->fn(r);
            else
                module_hit->fn(r, module_hit->arg);
        } else if (module_hit && !module_hit->pooled && text_valid(r, module_hit->pattern))
            module_hit->fn(r, module_hit->arg);
    }
    if (c->handed)
        return; /* api_store_job: api_call_done answers */
    if (r->deferred && !r->answered) {
        r->late = true; /* answered from a store job's done: api_deferred_end */
        svc->audit = NULL;
        return;
    }
    api_call_end(svc, c);
}

/* ---- answers that wait on a store job (esim_api_defer) ------------------------------- */

void esim_api_defer(esim_api_request *r)
{
    if (r && !r->on_worker)
        r->deferred = true;
}

/* Before a module's answer: a deferred request answered after its handler
 * returned is the audit's request again for that answer. */
static bool api_deferred_begin(api_request *r)
{
    if (!r->deferred)
        return false;
    r->answered = true;
    if (!r->late)
        return false;
    r->svc->audit = r;
    return true;
}

/* After it: the audit entry and the request's memory, as api_dispatch
 * would have done. */
static void api_deferred_end(api_request *r)
{
    api_call *c = (api_call *)((char *)r - offsetof(api_call, r));
    api_call_end(r->svc, c);
}

/* ---- routes of modules (service.h) ---------------------------------------------------------- */

static esim_err add_route(esim_service *svc, const char *method, const char *pattern,
                          esim_api_handler fn, void *arg, bool public_route, bool pooled)
{
    static const struct {
        const char *word;
        enum evhttp_cmd_type cmd;
    } methods[] = {{"GET", EVHTTP_REQ_GET},
                   {"POST", EVHTTP_REQ_POST},
                   {"PUT", EVHTTP_REQ_PUT},
                   {"DELETE", EVHTTP_REQ_DELETE}};
    if (!svc || !method || !pattern || !fn || pattern[0] != '/')
        return ESIM_EINVAL;
    size_t m = 0;
    while (m < sizeof methods / sizeof methods[0] && strcmp(methods[m].word, method) != 0)
        m++;
    if (m == sizeof methods / sizeof methods[0])
        return ESIM_EINVAL;
    size_t params = 0;
    for (const char *p = pattern; (p = strstr(p, "/:")) != NULL; p += 2)
        if (p[2] == '/' || p[2] == '\0')
            params++;
    if (params > API_MAX_PARAMS)
        return ESIM_EINVAL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (routes[i].method == methods[m].cmd && strcmp(routes[i].pattern, pattern) == 0)
            return ESIM_EEXIST;
    for (size_t i = 0; i < svc->n_routes; i++)
        if (svc->routes[i].method == methods[m].cmd && strcmp(svc->routes[i].pattern, pattern) == 0)
            return ESIM_EEXIST;
    if (svc->n_routes == svc->cap_routes) {
        size_t cap = svc->cap_routes ? svc->cap_routes * 2 : 16;
        svc_route *grown = realloc(svc->routes, cap * sizeof *grown);
        if (!grown)
            return ESIM_ENOMEM;
        svc->routes = grown;
        svc->cap_routes = cap;
    }
    char *copy = strdup(pattern);
    if (!copy)
        return ESIM_ENOMEM;
    svc->routes[svc->n_routes++] = (svc_route){methods[m].cmd, copy, fn, arg, public_route, pooled};
    return ESIM_OK;
}

esim_err esim_service_add_route(esim_service *svc, const char *method, const char *pattern,
                                esim_api_handler fn, void *arg)
{
    return add_route(svc, method, pattern, fn, arg, false, false);
}

esim_err esim_service_add_store_route(esim_service *svc, const char *method, const char *pattern,
                                      esim_api_handler fn, void *arg)
{
    return add_route(svc, method, pattern, fn, arg, false, true);
}

store *esim_api_store(esim_api_request *r)
{
    return r->st;
}

esim_err esim_service_add_public_route(esim_service *svc, const char *method, const char *pattern,
                                       esim_api_handler fn, void *arg)
{
    return add_route(svc, method, pattern, fn, arg, true, false);
}

esim_err esim_service_set_session_auth(esim_service *svc, esim_api_session_fn fn, void *arg)
{
    if (!svc)
        return ESIM_EINVAL;
    svc->session_fn = fn;
    svc->session_arg = fn ? arg : NULL;
    return ESIM_OK;
}

const char *esim_api_method(const esim_api_request *r)
{
    switch (evhttp_request_get_command(r->req)) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    default:
        return "OTHER";
    }
}

const char *esim_api_peer(const esim_api_request *r, char out[48])
{
    access_peer(r->req, out);
    return out;
}

const char *esim_api_path(const esim_api_request *r)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(r->req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    return path ? path : "";
}

const char *esim_api_header(const esim_api_request *r, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(r->req), name);
}

void esim_api_add_header(esim_api_request *r, const char *name, const char *value)
{
    if (r->on_worker)
        api_add_header(r, name, value);
    else
        evhttp_add_header(evhttp_request_get_output_headers(r->req), name, value);
}

void esim_api_reply(esim_api_request *r, int code, const char *content_type, const void *body,
                    size_t len)
{
    if (!r->on_worker) {
        bool late = api_deferred_begin(r);
        if (r->hold) { /* given by api_call_end once its audit entry is in */
            api_send(r, code, content_type, body, len);
            r->held.route = M_ROUTE_OTHER;
        } else
            http_reply(r->svc, r->req, M_ROUTE_OTHER, code, content_type, body, len);
        if (late)
            api_deferred_end(r);
        return;
    }
    api_send(r, code, content_type, body, len);
    r->held.route = M_ROUTE_OTHER;
}

void api_routes_free(esim_service *svc)
{
    for (size_t i = 0; i < svc->n_routes; i++)
        free(svc->routes[i].pattern);
    free(svc->routes);
    svc->routes = NULL;
    svc->n_routes = svc->cap_routes = 0;
}

esim_service *esim_api_service(esim_api_request *r)
{
    return r->svc;
}

const char *esim_api_caller(const esim_api_request *r)
{
    return r->who;
}

esim_role esim_api_caller_role(const esim_api_request *r)
{
    return r->role;
}

const char *esim_api_param(const esim_api_request *r, size_t i)
{
    return i < r->n_params ? r->params[i] : NULL;
}

const char *esim_api_query(const esim_api_request *r, const char *key)
{
    return r->query && key ? evhttp_find_header(r->query, key) : NULL;
}

const unsigned char *esim_api_body(esim_api_request *r, size_t *len)
{
    return http_body(r->req, len);
}

struct json_t *esim_api_body_json(esim_api_request *r)
{
    return api_body_json(r);
}

void esim_api_reply_json(esim_api_request *r, int code, struct json_t *body)
{
    bool late = api_deferred_begin(r);
    api_reply_json(r, code, body);
    if (late)
        api_deferred_end(r);
}

void esim_api_error(esim_api_request *r, int code, const char *field, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bool late = api_deferred_begin(r);
    api_error(r, code, field, "%s", msg);
    if (late)
        api_deferred_end(r);
}

int esim_api_status_for(esim_err rc)
{
    return api_status_for(rc);
}
