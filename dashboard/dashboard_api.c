/*
 * dashboard_api.c — the read endpoints the pages need beyond the admin API
 * (docs/dashboard.md): the fleet counted by platform, enrolment, push state
 * and verified eSIM (cached a few seconds, so that any number of open
 * dashboards costs one query per period), a searchable page of devices
 * with each one's platform and eSIM, and one device whole (its record,
 * facts, eSIM subscriptions from its last answer that listed them, its
 * command history with answers and error chains). Same keys and roles as
 * the rest of /v1/. Times are milliseconds since the epoch (0 = never).
 */
#include <stdlib.h>
#include <string.h>

#include "dashboard/dashboard_internal.h"
#include "plist/esim_plist.h"
#include "service/store.h"

#define FLEET_CACHE_MS 3000

static json_t *str_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

static json_t *device_row(store *st, const store_device *d)
{
    store_device_facts f;
    bool facts = esim_store_facts_get(st, d->udid, &f, NULL) == ESIM_OK;
    json_t *o = json_object();
    json_object_set_new(o, "udid", json_string(d->udid));
    json_object_set_new(o, "platform",
                        json_string(dash_platform(d->platform, d->product_name, d->model)));
    json_object_set_new(o, "serial_number", str_or_null(d->serial_number));
    json_object_set_new(o, "device_name", str_or_null(d->device_name));
    json_object_set_new(o, "product_name", str_or_null(d->product_name));
    json_object_set_new(o, "os_version", str_or_null(d->os_version));
    json_object_set_new(o, "enrolled", json_boolean(d->enrolled));
    json_object_set_new(o, "push", json_string(esim_store_push_state_name(d->push_state)));
    json_object_set_new(o, "eid", str_or_null(d->eid));
    json_object_set_new(o, "last_seen_ms", json_integer(d->last_seen_at));
    json_object_set_new(o, "enrolled_ms", json_integer(d->enrolled_at));
    json_object_set_new(o, "esim_verified", json_boolean(facts && f.verified_ms > 0));
    json_object_set_new(o, "verified_ms", json_integer(facts ? f.verified_ms : 0));
    json_object_set_new(o, "verified_iccid", str_or_null(facts ? f.iccid : NULL));
    json_object_set_new(o, "supervised",
                        !facts || f.supervised < 0 ? json_null() : json_boolean(f.supervised));
    return o;
}

/* ---- GET /v1/dashboard/fleet ------------------------------------------------------------ */

static void add_count(json_t *obj, const char *key, uint64_t n)
{
    json_t *v = json_object_get(obj, key);
    json_object_set_new(obj, key, json_integer(json_integer_value(v) + (json_int_t)n));
}

static void h_fleet(esim_api_request *r, void *arg)
{
    dashboard *d = arg;
    dash_fleet_cache *c = dash_fleet_cache_of(d);
    int64_t now = esim_now_ms();
    /* Kept FLEET_CACHE_MS, or 30 times what the last count took (a large
     * fleet: the store gives at most ~3% of a connection's time to it). The
     * route runs on pool workers: the cache is read and replaced under its
     * lock, the count itself runs outside it. */
    pthread_mutex_lock(&c->lock);
    int64_t keep = c->took_ms * 30 > FLEET_CACHE_MS ? c->took_ms * 30 : FLEET_CACHE_MS;
    json_t *answer = c->json && now - c->at_ms <= keep ? json_deep_copy(c->json) : NULL;
    pthread_mutex_unlock(&c->lock);
    if (!answer) {
        store_fleet_row *rows = NULL;
        size_t n = 0;
        esim_error e = {{0}};
        esim_err rc = esim_store_fleet_counts(esim_api_store(r), &rows, &n, &e);
        if (rc != ESIM_OK) {
            esim_api_error(r, esim_api_status_for(rc), NULL, "%s", e.msg);
            return;
        }
        json_t *total = json_object(), *platforms = json_object();
        for (size_t i = 0; i < n; i++) {
            const char *p = dash_platform(rows[i].platform, rows[i].product_name, rows[i].model);
            json_t *pl = json_object_get(platforms, p);
            if (!pl) {
                pl = json_object();
                json_object_set_new(platforms, p, pl);
            }
            json_t *targets[] = {total, pl};
            for (size_t k = 0; k < 2; k++) {
                add_count(targets[k], "devices", rows[i].count);
                add_count(targets[k], "enrolled", rows[i].enrolled ? rows[i].count : 0);
                add_count(targets[k], "verified", rows[i].verified ? rows[i].count : 0);
                char key[32];
                snprintf(key, sizeof key, "push_%s",
                         esim_store_push_state_name(rows[i].push_state));
                add_count(targets[k], key, rows[i].count);
            }
        }
        free(rows);
        answer = json_pack("{s:o,s:o,s:I}", "total", total, "platforms", platforms, "at_ms",
                           (json_int_t)now);
        json_t *kept = answer ? json_deep_copy(answer) : NULL;
        pthread_mutex_lock(&c->lock);
        if (kept && now >= c->at_ms) {
            json_decref(c->json);
            c->json = kept;
            kept = NULL;
            c->at_ms = now;
            c->took_ms = esim_now_ms() - now;
        }
        pthread_mutex_unlock(&c->lock);
        json_decref(kept);
    }
    esim_api_reply_json(r, 200, answer);
}

/* ---- GET /v1/dashboard/devices?q=&after=&limit= ------------------------------------------- */

static void h_devices(esim_api_request *r, void *arg)
{
    const char *lim = esim_api_query(r, "limit");
    char *end = NULL;
    long limit = lim ? strtol(lim, &end, 10) : 50;
    if (lim && (!*lim || *end || limit < 1 || limit > 500)) {
        esim_api_error(r, 400, "limit", "limit: must be from 1 to 500");
        return;
    }
    store *st = esim_api_store(r);
    store_device *list = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc = esim_store_device_search(st, esim_api_query(r, "q"), esim_api_query(r, "after"),
                                           (size_t)limit, &list, &n, &e);
    if (rc != ESIM_OK) {
        esim_api_error(r, esim_api_status_for(rc), rc == ESIM_EINVAL ? "q" : NULL, "%s", e.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, device_row(st, &list[i]));
    json_t *next = n == (size_t)limit ? json_string(list[n - 1].udid) : json_null();
    free(list);
    esim_api_reply_json(r, 200, json_pack("{s:o,s:o}", "devices", arr, "next_after", next));
}

/* ---- GET /v1/dashboard/devices/{udid} -------------------------------------------------------- */

static const char *status_words(const store_queue_entry *q)
{
    switch (q->state) {
    case STORE_Q_QUEUED:
        return "waiting to be delivered";
    case STORE_Q_PUSHED:
        return "device woken, not yet delivered";
    case STORE_Q_SENT:
        return "delivered, no answer yet";
    case STORE_Q_ACKNOWLEDGED:
        return "acknowledged";
    case STORE_Q_ERROR:
        return "answered with an error";
    case STORE_Q_FORMAT_ERROR:
        return "refused as malformed (CommandFormatError)";
    case STORE_Q_NOT_NOW:
        return "device said NotNow: it will be asked again";
    case STORE_Q_EXPIRED:
        return "expired before an answer";
    case STORE_Q_CANCELED:
        return "canceled";
    default:
        return "";
    }
}

static json_t *subscriptions_json(const esim_subscription *s, size_t n)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(
            arr, json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:b,s:b}", "eid", str_or_null(s[i].eid),
                           "iccid", str_or_null(s[i].iccid), "slot", str_or_null(s[i].slot),
                           "label", str_or_null(s[i].label), "carrier", str_or_null(s[i].carrier),
                           "phone_number", str_or_null(s[i].phone_number), "data_preferred",
                           s[i].is_data_preferred, "voice_preferred", s[i].is_voice_preferred));
    return arr;
}

static void h_device(esim_api_request *r, void *arg)
{
    store *st = esim_api_store(r);
    const char *udid = esim_api_param(r, 0);
    store_device dev;
    esim_error e = {{0}};
    esim_err rc = esim_store_device_get(st, udid, &dev, &e);
    if (rc != ESIM_OK) {
        esim_api_error(r, esim_api_status_for(rc), rc == ESIM_ENOTFOUND ? "udid" : NULL, "%s",
                       e.msg);
        return;
    }
    store_queue_entry *q = NULL;
    size_t n = 0;
    if ((rc = esim_store_device_queue(st, udid, true, &q, &n, &e)) != ESIM_OK) {
        esim_api_error(r, esim_api_status_for(rc), NULL, "%s", e.msg);
        return;
    }
    json_t *cmds = json_array(), *subs = json_null();
    int64_t subs_at = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *chain = q[i].error_chain_json ? json_loads(q[i].error_chain_json, 0, NULL) : NULL;
        json_t *c = json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:I,s:I,s:I,s:o}", "command_uuid",
                              q[i].command_uuid, "request_type", q[i].request_type, "state",
                              esim_store_qstate_name(q[i].state), "status", status_words(&q[i]),
                              "attempts", q[i].attempts, "not_now", q[i].not_now_count,
                              "enqueued_ms", (json_int_t)q[i].enqueued_at, "sent_ms",
                              (json_int_t)q[i].sent_at, "answered_ms", (json_int_t)q[i].answered_at,
                              "error_chain", chain ? chain : json_array());
        json_array_append_new(cmds, c);
        /* The newest answer that listed the subscriptions (final entries
         * come newest first). */
        if (q[i].result.len && q[i].answered_at > subs_at &&
            strcmp(q[i].request_type, "DeviceInformation") == 0) {
            esim_msg msg;
            memset(&msg, 0, sizeof msg);
            if (esim_msg_parse(q[i].result.data, q[i].result.len, NULL, &msg, NULL) == ESIM_OK) {
                esim_subscription *list = NULL;
                size_t ns = 0;
                plist_t responses =
                    msg.root ? plist_dict_get_item(msg.root, "QueryResponses") : NULL;
                if (responses && plist_dict_get_item(responses, "ServiceSubscriptions") &&
                    esim_msg_service_subscriptions(&msg, &list, &ns, NULL) == ESIM_OK) {
                    json_decref(subs);
                    subs = subscriptions_json(list, ns);
                    subs_at = q[i].answered_at;
                }
                free(list);
            }
            esim_msg_free(&msg);
        }
    }
    esim_store_queue_entries_free(q, n);
    json_t *o = device_row(st, &dev);
    json_object_set_new(o, "model", str_or_null(dev.model));
    json_object_set_new(o, "build_version", str_or_null(dev.build_version));
    json_object_set_new(o, "imei", str_or_null(dev.imei));
    json_object_set_new(o, "checked_out_ms", json_integer(dev.checked_out_at));
    json_object_set_new(o, "token_updated_ms", json_integer(dev.token_updated_at));
    json_object_set_new(o, "subscriptions", subs);
    json_object_set_new(o, "subscriptions_ms", json_integer(subs_at));
    json_object_set_new(o, "commands", cmds);
    esim_api_reply_json(r, 200, o);
}

esim_err dash_api_add_routes(dashboard *d, esim_service *svc, esim_error *err)
{
    /* Store reads only: on the store pool when there is one. */
    esim_err rc = esim_service_add_store_route(svc, "GET", "/v1/dashboard/fleet", h_fleet, d);
    if (rc == ESIM_OK)
        rc = esim_service_add_store_route(svc, "GET", "/v1/dashboard/devices", h_devices, d);
    if (rc == ESIM_OK)
        rc = esim_service_add_store_route(svc, "GET", "/v1/dashboard/devices/:", h_device, d);
    return rc;
}
