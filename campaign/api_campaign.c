/*
 * api_campaign.c — the admin API of campaigns, groups, tags, offline imports
 * and diagnosis (docs/campaigns.md): thin handlers that validate the
 * request, call campaign.c and answer JSON. campaigns_add_routes at the end
 * lists the routes, added to the service with esim_service_add_route.
 */
#include <stdlib.h>
#include <string.h>

#include "campaign/campaign_internal.h"

static const char *query_get(esim_api_request *r, const char *key)
{
    return esim_api_query(r, key);
}

void campaigns_api_fail(esim_api_request *r, esim_err rc, const char *field, const esim_error *e)
{
    esim_api_error(r, esim_api_status_for(rc), field, "%s", e->msg[0] ? e->msg : esim_strerror(rc));
}

/* A bounded integer query parameter; false after answering 400. */
static bool query_long(esim_api_request *r, const char *key, long def, long min, long max,
                       long *out)
{
    const char *v = query_get(r, key);
    if (!v) {
        *out = def;
        return true;
    }
    char *end = NULL;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < min || x > max) {
        esim_api_error(r, 400, key, "%s: must be a whole number from %ld to %ld", key, min, max);
        return false;
    }
    *out = x;
    return true;
}

static campaign *find_or_404(campaigns *cs, esim_api_request *r)
{
    campaign *c = campaigns_find(cs, esim_api_param(r, 0));
    if (!c)
        esim_api_error(r, 404, "id", "no campaign with id %s", esim_api_param(r, 0));
    return c;
}

/* ---- campaigns ------------------------------------------------------------------ */

static void api_campaign_create(esim_api_request *r, void *arg)
{
    campaigns *cs = arg;
    json_t *body = esim_api_body_json(r);
    if (body)
        campaigns_create(cs, r, body); /* answers, now or once its store job is back */
}

static void answer_list(campaigns *cs, esim_api_request *r)
{
    esim_api_reply_json(r, 200, json_pack("{s:o}", "campaigns", campaigns_list_json(cs)));
}

static void api_campaign_list(esim_api_request *r, void *arg)
{
    campaigns_view(arg, r, NULL, answer_list);
}

/* Devices of |c| from index |after| on, in |state| (or all), at most |limit|. */
static json_t *device_page(const campaign *c, int state, size_t start, size_t limit, long *next)
{
    json_t *arr = json_array();
    size_t i = start, got = 0;
    for (; i < campaign_device_count(c) && got < limit; i++) {
        if (state >= 0 && campaign_device_at(c, i)->state != state)
            continue;
        json_array_append_new(arr, campaigns_device_json(c, i));
        got++;
    }
    *next = i < campaign_device_count(c) && got == limit ? (long)i : -1;
    return arr;
}

static void answer_get(campaigns *cs, esim_api_request *r)
{
    campaign *c = find_or_404(cs, r);
    long limit;
    if (!c || !query_long(r, "limit", 1000, 0, 10000, &limit))
        return;
    json_t *o = campaigns_summary_json(cs, c);
    long next;
    json_object_set_new(o, "device_states", device_page(c, -1, 0, (size_t)limit, &next));
    json_object_set_new(o, "device_states_truncated", json_boolean(next >= 0));
    json_object_set_new(o, "creation_warnings", campaigns_creation_warnings(cs, c));
    esim_api_reply_json(r, 200, o);
}

static void api_campaign_get(esim_api_request *r, void *arg)
{
    campaigns_view(arg, r, esim_api_param(r, 0), answer_get);
}

static void answer_devices(campaigns *cs, esim_api_request *r)
{
    campaign *c = find_or_404(cs, r);
    long limit, after;
    if (!c || !query_long(r, "limit", 1000, 1, 10000, &limit) ||
        !query_long(r, "after", 0, 0, (long)campaign_device_count(c), &after))
        return;
    int state = -1;
    const char *sv = query_get(r, "state");
    if (sv) {
        campaign_dev_state st;
        esim_error e = {{0}};
        if (campaign_dev_state_parse(sv, &st, &e) != ESIM_OK) {
            esim_api_error(r, 400, "state", "%s", e.msg);
            return;
        }
        state = (int)st;
    }
    long next;
    json_t *arr = device_page(c, state, (size_t)after, (size_t)limit, &next);
    esim_api_reply_json(r, 200,
                        json_pack("{s:s, s:o, s:o}", "id", campaign_id(c), "devices", arr,
                                  "next_after", next >= 0 ? json_integer(next) : json_null()));
}

static void api_campaign_devices(esim_api_request *r, void *arg)
{
    campaigns_view(arg, r, esim_api_param(r, 0), answer_devices);
}

static void control(campaigns *cs, esim_api_request *r, const char *verb)
{
    /* Answers, now or once its store job is back. */
    campaigns_control(cs, r, esim_api_param(r, 0), verb);
}

static void api_campaign_pause(esim_api_request *r, void *arg)
{
    campaigns *cs = arg;
    control(cs, r, "pause");
}
static void api_campaign_resume(esim_api_request *r, void *arg)
{
    campaigns *cs = arg;
    control(cs, r, "resume");
}
static void api_campaign_cancel(esim_api_request *r, void *arg)
{
    campaigns *cs = arg;
    control(cs, r, "cancel");
}

/* ---- imports ---------------------------------------------------------------------- */

/* Shifts reported line numbers by ?line_offset=N, for clients that send a
 * long file in parts. */
static void shift_lines(json_t *o, long offset)
{
    if (!offset)
        return;
    const char *keys[] = {"bad", "unmatched"};
    for (int k = 0; k < 2; k++) {
        json_t *arr = json_object_get(o, keys[k]);
        size_t i;
        json_t *v;
        json_array_foreach(arr, i, v)
        {
            json_t *line = json_object_get(v, "line");
            json_object_set_new(v, "line", json_integer(json_integer_value(line) + offset));
        }
    }
}

static void import(esim_api_request *r, bool codes)
{
    long offset;
    if (!query_long(r, "line_offset", 0, 0, 100000000, &offset))
        return;
    size_t len = 0;
    const unsigned char *body = esim_api_body(r, &len);
    json_t *out = NULL;
    esim_error e = {{0}};
    store *st = esim_api_store(r);
    esim_err rc = codes ? campaigns_import_codes(st, body ? (const char *)body : "", len, &out, &e)
                        : campaigns_import_eids(st, body ? (const char *)body : "", len, &out, &e);
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, NULL, &e);
        return;
    }
    shift_lines(out, offset);
    esim_api_reply_json(r, 200, out);
}

static void api_import_eids(esim_api_request *r, void *arg)
{
    (void)arg;
    import(r, false);
}
static void api_import_codes(esim_api_request *r, void *arg)
{
    (void)arg;
    import(r, true);
}

/* ---- groups and tags --------------------------------------------------------------- */

/* The strings of a JSON array, borrowed from it. false after answering 400. */
static bool string_array(esim_api_request *r, json_t *arr, const char *field, const char ***out,
                         size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!arr)
        return true;
    if (!json_is_array(arr)) {
        esim_api_error(r, 400, field, "%s: must be an array of strings", field);
        return false;
    }
    *out = calloc(json_array_size(arr) + 1, sizeof **out);
    if (!*out) {
        esim_api_error(r, 500, NULL, "out of memory");
        return false;
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v)) {
            esim_api_error(r, 400, field, "%s: item %zu is not a string", field, i);
            free(*out);
            *out = NULL;
            return false;
        }
        (*out)[i] = json_string_value(v);
    }
    *n = json_array_size(arr);
    return true;
}

static void group_write(campaigns *cs, esim_api_request *r, const char *name, json_t *body,
                        const char *add_key, bool create)
{
    const char **add = NULL, **rem = NULL;
    size_t n_add = 0, n_rem = 0;
    if (!string_array(r, json_object_get(body, add_key), add_key, &add, &n_add) ||
        !string_array(r, json_object_get(body, "remove"), "remove", &rem, &n_rem)) {
        free(add);
        return;
    }
    esim_error e = {{0}};
    esim_err rc = esim_store_group_put(esim_api_store(r), name, add, n_add, rem, n_rem, create,
                                       esim_now_ms(), &e);
    free(add);
    free(rem);
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, "name", &e);
        return;
    }
    char(*members)[65] = NULL;
    size_t n = 0;
    if (esim_store_group_members(esim_api_store(r), name, &members, &n, &e) != ESIM_OK) {
        campaigns_api_fail(r, ESIM_ESTORE, NULL, &e);
        return;
    }
    free(members);
    esim_api_reply_json(r, create ? 201 : 200,
                        json_pack("{s:s, s:I}", "name", name, "members", (json_int_t)n));
}

static void api_group_create(esim_api_request *r, void *arg)
{
    campaigns *cs = arg;
    json_t *body = esim_api_body_json(r);
    if (!body)
        return;
    json_t *name = json_object_get(body, "name");
    if (!json_is_string(name))
        esim_api_error(r, 400, "name", "name: a group name is required");
    else
        group_write(cs, r, json_string_value(name), body, "udids", true);
    json_decref(body);
}

static void api_group_members(esim_api_request *r, void *arg)
{
    campaigns *cs = arg;
    json_t *body = esim_api_body_json(r);
    if (!body)
        return;
    group_write(cs, r, esim_api_param(r, 0), body, "add", false);
    json_decref(body);
}

static void api_group_list(esim_api_request *r, void *arg)
{
    (void)arg;
    store_group *groups = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc = esim_store_groups(esim_api_store(r), &groups, &n, &e);
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, NULL, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_pack("{s:s, s:I}", "name", groups[i].name, "members",
                                             (json_int_t)groups[i].members));
    free(groups);
    esim_api_reply_json(r, 200, json_pack("{s:o}", "groups", arr));
}

static void api_group_get(esim_api_request *r, void *arg)
{
    (void)arg;
    char(*members)[65] = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc =
        esim_store_group_members(esim_api_store(r), esim_api_param(r, 0), &members, &n, &e);
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, "name", &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(members[i]));
    free(members);
    esim_api_reply_json(r, 200,
                        json_pack("{s:s, s:o}", "name", esim_api_param(r, 0), "udids", arr));
}

static void api_group_delete(esim_api_request *r, void *arg)
{
    (void)arg;
    esim_error e = {{0}};
    esim_err rc = esim_store_group_delete(esim_api_store(r), esim_api_param(r, 0), &e);
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, "name", &e);
        return;
    }
    esim_api_reply_json(r, 200,
                        json_pack("{s:s, s:b}", "name", esim_api_param(r, 0), "deleted", 1));
}

static void api_device_tags_get(esim_api_request *r, void *arg)
{
    (void)arg;
    char(*tags)[65] = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc = esim_store_device_tags(esim_api_store(r), esim_api_param(r, 0), &tags, &n, &e);
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, NULL, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_string(tags[i]));
    free(tags);
    esim_api_reply_json(r, 200, json_pack("{s:s, s:o}", "udid", esim_api_param(r, 0), "tags", arr));
}

static void api_device_tags_post(esim_api_request *r, void *arg)
{
    campaigns *cs = arg;
    store_device d;
    esim_error e = {{0}};
    esim_err rc = esim_store_device_get(esim_api_store(r), esim_api_param(r, 0), &d, &e);
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, "udid", &e);
        return;
    }
    json_t *body = esim_api_body_json(r);
    if (!body)
        return;
    const char **add = NULL, **rem = NULL;
    size_t n_add = 0, n_rem = 0;
    if (string_array(r, json_object_get(body, "add"), "add", &add, &n_add) &&
        string_array(r, json_object_get(body, "remove"), "remove", &rem, &n_rem)) {
        rc = esim_store_tags_set(esim_api_store(r), esim_api_param(r, 0), add, n_add, rem, n_rem,
                                 &e);
        if (rc != ESIM_OK)
            campaigns_api_fail(r, rc, "add", &e);
        else
            api_device_tags_get(r, cs);
    }
    free(add);
    free(rem);
    json_decref(body);
}

/* ---- diagnosis ---------------------------------------------------------------------- */

static void api_device_diagnosis(esim_api_request *r, void *arg)
{
    campaigns_diagnose(arg, r, esim_api_param(r, 0)); /* answers, now or once its job is back */
}

/* ---- the routes ------------------------------------------------------------------------ */

esim_err campaigns_add_routes(campaigns *cs, esim_error *err)
{
    /* |store|: the handler's only work is the store (groups, tags, the
     * imports), so it runs on the store pool when there is one
     * (esim_service_add_store_route). The campaign routes and the diagnosis
     * read or change the engine's memory, which is the loop's: they stay
     * there, and their store work is a store job (campaigns_view,
     * campaigns_create, campaigns_control, campaigns_diagnose). */
    static const struct {
        const char *method, *pattern;
        esim_api_handler fn;
        bool store;
    } routes[] = {
        {"POST", "/v1/campaigns", api_campaign_create, false},
        {"GET", "/v1/campaigns", api_campaign_list, false},
        {"GET", "/v1/campaigns/:", api_campaign_get, false},
        {"GET", "/v1/campaigns/:/devices", api_campaign_devices, false},
        {"POST", "/v1/campaigns/:/pause", api_campaign_pause, false},
        {"POST", "/v1/campaigns/:/resume", api_campaign_resume, false},
        {"POST", "/v1/campaigns/:/cancel", api_campaign_cancel, false},
        {"POST", "/v1/import/eids", api_import_eids, true},
        {"POST", "/v1/import/activation-codes", api_import_codes, true},
        {"POST", "/v1/groups", api_group_create, true},
        {"GET", "/v1/groups", api_group_list, true},
        {"GET", "/v1/groups/:", api_group_get, true},
        {"POST", "/v1/groups/:/members", api_group_members, true},
        {"DELETE", "/v1/groups/:", api_group_delete, true},
        {"GET", "/v1/devices/:/tags", api_device_tags_get, true},
        {"POST", "/v1/devices/:/tags", api_device_tags_post, true},
        {"GET", "/v1/devices/:/diagnosis", api_device_diagnosis, false},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        esim_err rc = (routes[i].store ? esim_service_add_store_route : esim_service_add_route)(
            campaigns_service(cs), routes[i].method, routes[i].pattern, routes[i].fn, cs);
        if (rc != ESIM_OK)
            return esim_fail(err, rc, "cannot add the route %s %s: %s", routes[i].method,
                             routes[i].pattern, esim_strerror(rc));
    }
    return ESIM_OK;
}
