/*
 * api_campaign.c — the admin API of campaigns, groups, tags, offline imports
 * and diagnosis (docs/campaigns.md): thin handlers that validate the
 * request, call campaign.c and answer JSON. The routes are lines in api.c's
 * table.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/http.h>

#include "service/campaign_service.h"
#include "service/service_internal.h"

static const char *query_get(api_request *r, const char *key)
{
    return r->query ? evhttp_find_header(r->query, key) : NULL;
}

static campaigns *ctx(api_request *r)
{
    return r->svc->campaigns;
}

static bool ready(api_request *r)
{
    if (ctx(r))
        return true;
    api_error(r, 503, NULL, "campaigns are not available on this service");
    return false;
}

static void fail(api_request *r, esim_err rc, const char *field, const esim_error *e)
{
    api_error(r, api_status_for(rc), field, "%s", e->msg[0] ? e->msg : esim_strerror(rc));
}

/* A bounded integer query parameter; false after answering 400. */
static bool query_long(api_request *r, const char *key, long def, long min, long max, long *out)
{
    const char *v = query_get(r, key);
    if (!v) {
        *out = def;
        return true;
    }
    char *end = NULL;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < min || x > max) {
        api_error(r, 400, key, "%s: must be a whole number from %ld to %ld", key, min, max);
        return false;
    }
    *out = x;
    return true;
}

static campaign *find_or_404(api_request *r)
{
    campaign *c = campaigns_find(ctx(r), r->params[0]);
    if (!c)
        api_error(r, 404, "id", "no campaign with id %s", r->params[0]);
    return c;
}

/* ---- campaigns ------------------------------------------------------------------ */

void api_campaign_create(api_request *r)
{
    if (!ready(r))
        return;
    json_t *body = api_body_json(r);
    if (!body)
        return;
    json_t *out = NULL;
    const char *field = NULL;
    esim_error e = {{0}};
    esim_err rc = campaigns_create(ctx(r), body, &out, &field, &e);
    /* |field| may point at a key of |body|: answer before letting it go. */
    if (rc != ESIM_OK)
        fail(r, rc, field, &e);
    else
        api_reply_json(r, 201, out);
    json_decref(body);
}

void api_campaign_list(api_request *r)
{
    if (!ready(r))
        return;
    api_reply_json(r, 200, json_pack("{s:o}", "campaigns", campaigns_list_json(ctx(r))));
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

void api_campaign_get(api_request *r)
{
    if (!ready(r))
        return;
    campaign *c = find_or_404(r);
    long limit;
    if (!c || !query_long(r, "limit", 1000, 0, 10000, &limit))
        return;
    json_t *o = campaigns_summary_json(ctx(r), c);
    long next;
    json_object_set_new(o, "device_states", device_page(c, -1, 0, (size_t)limit, &next));
    json_object_set_new(o, "device_states_truncated", json_boolean(next >= 0));
    api_reply_json(r, 200, o);
}

void api_campaign_devices(api_request *r)
{
    if (!ready(r))
        return;
    campaign *c = find_or_404(r);
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
            api_error(r, 400, "state", "%s", e.msg);
            return;
        }
        state = (int)st;
    }
    long next;
    json_t *arr = device_page(c, state, (size_t)after, (size_t)limit, &next);
    api_reply_json(r, 200,
                   json_pack("{s:s, s:o, s:o}", "id", campaign_id(c), "devices", arr, "next_after",
                             next >= 0 ? json_integer(next) : json_null()));
}

static void control(api_request *r, const char *verb)
{
    if (!ready(r))
        return;
    campaign *c = find_or_404(r);
    if (!c)
        return;
    esim_error e = {{0}};
    esim_err rc = campaigns_control(ctx(r), c, verb, &e);
    if (rc != ESIM_OK) {
        fail(r, rc, NULL, &e);
        return;
    }
    api_reply_json(r, 200, campaigns_summary_json(ctx(r), c));
}

void api_campaign_pause(api_request *r)
{
    control(r, "pause");
}
void api_campaign_resume(api_request *r)
{
    control(r, "resume");
}
void api_campaign_cancel(api_request *r)
{
    control(r, "cancel");
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

static void import(api_request *r, bool codes)
{
    if (!ready(r))
        return;
    long offset;
    if (!query_long(r, "line_offset", 0, 0, 100000000, &offset))
        return;
    size_t len = 0;
    const unsigned char *body = http_body(r->req, &len);
    json_t *out = NULL;
    esim_error e = {{0}};
    esim_err rc =
        codes ? campaigns_import_codes(ctx(r), body ? (const char *)body : "", len, &out, &e)
              : campaigns_import_eids(ctx(r), body ? (const char *)body : "", len, &out, &e);
    if (rc != ESIM_OK) {
        fail(r, rc, NULL, &e);
        return;
    }
    shift_lines(out, offset);
    api_reply_json(r, 200, out);
}

void api_import_eids(api_request *r)
{
    import(r, false);
}
void api_import_codes(api_request *r)
{
    import(r, true);
}

/* ---- groups and tags --------------------------------------------------------------- */

/* The strings of a JSON array, borrowed from it. false after answering 400. */
static bool string_array(api_request *r, json_t *arr, const char *field, const char ***out,
                         size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!arr)
        return true;
    if (!json_is_array(arr)) {
        api_error(r, 400, field, "%s: must be an array of strings", field);
        return false;
    }
    *out = calloc(json_array_size(arr) + 1, sizeof **out);
    if (!*out) {
        api_error(r, 500, NULL, "out of memory");
        return false;
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (!json_is_string(v)) {
            api_error(r, 400, field, "%s: item %zu is not a string", field, i);
            free(*out);
            *out = NULL;
            return false;
        }
        (*out)[i] = json_string_value(v);
    }
    *n = json_array_size(arr);
    return true;
}

static void group_write(api_request *r, const char *name, json_t *body, const char *add_key,
                        bool create)
{
    const char **add = NULL, **rem = NULL;
    size_t n_add = 0, n_rem = 0;
    if (!string_array(r, json_object_get(body, add_key), add_key, &add, &n_add) ||
        !string_array(r, json_object_get(body, "remove"), "remove", &rem, &n_rem)) {
        free(add);
        return;
    }
    esim_error e = {{0}};
    esim_err rc = cstore_group_put(campaigns_store(ctx(r)), name, add, n_add, rem, n_rem, create,
                                   esim_now_ms(), &e);
    free(add);
    free(rem);
    if (rc != ESIM_OK) {
        fail(r, rc, "name", &e);
        return;
    }
    char(*members)[65] = NULL;
    size_t n = 0;
    if (cstore_group_members(campaigns_store(ctx(r)), name, &members, &n, &e) != ESIM_OK) {
        fail(r, ESIM_ESTORE, NULL, &e);
        return;
    }
    free(members);
    api_reply_json(r, create ? 201 : 200,
                   json_pack("{s:s, s:I}", "name", name, "members", (json_int_t)n));
}

void api_group_create(api_request *r)
{
    if (!ready(r))
        return;
    json_t *body = api_body_json(r);
    if (!body)
        return;
    json_t *name = json_object_get(body, "name");
    if (!json_is_string(name))
        api_error(r, 400, "name", "name: a group name is required");
    else
        group_write(r, json_string_value(name), body, "udids", true);
    json_decref(body);
}

void api_group_members(api_request *r)
{
    if (!ready(r))
        return;
    json_t *body = api_body_json(r);
    if (!body)
        return;
    group_write(r, r->params[0], body, "add", false);
    json_decref(body);
}

void api_group_list(api_request *r)
{
    if (!ready(r))
        return;
    json_t *arr = NULL;
    esim_error e = {{0}};
    esim_err rc = cstore_groups_json(campaigns_store(ctx(r)), &arr, &e);
    if (rc != ESIM_OK) {
        fail(r, rc, NULL, &e);
        return;
    }
    api_reply_json(r, 200, json_pack("{s:o}", "groups", arr));
}

void api_group_get(api_request *r)
{
    if (!ready(r))
        return;
    char(*members)[65] = NULL;
    size_t n = 0;
    esim_error e = {{0}};
    esim_err rc = cstore_group_members(campaigns_store(ctx(r)), r->params[0], &members, &n, &e);
    if (rc != ESIM_OK) {
        fail(r, rc, "name", &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_string(members[i]));
    free(members);
    api_reply_json(r, 200, json_pack("{s:s, s:o}", "name", r->params[0], "udids", arr));
}

void api_group_delete(api_request *r)
{
    if (!ready(r))
        return;
    esim_error e = {{0}};
    esim_err rc = cstore_group_delete(campaigns_store(ctx(r)), r->params[0], &e);
    if (rc != ESIM_OK) {
        fail(r, rc, "name", &e);
        return;
    }
    api_reply_json(r, 200, json_pack("{s:s, s:b}", "name", r->params[0], "deleted", 1));
}

void api_device_tags_get(api_request *r)
{
    if (!ready(r))
        return;
    json_t *arr = NULL;
    esim_error e = {{0}};
    esim_err rc = cstore_tags_json(campaigns_store(ctx(r)), r->params[0], &arr, &e);
    if (rc != ESIM_OK) {
        fail(r, rc, NULL, &e);
        return;
    }
    api_reply_json(r, 200, json_pack("{s:s, s:o}", "udid", r->params[0], "tags", arr));
}

void api_device_tags_post(api_request *r)
{
    if (!ready(r))
        return;
    store_device d;
    esim_error e = {{0}};
    esim_err rc = esim_store_device_get(r->svc->st, r->params[0], &d, &e);
    if (rc != ESIM_OK) {
        fail(r, rc, "udid", &e);
        return;
    }
    json_t *body = api_body_json(r);
    if (!body)
        return;
    const char **add = NULL, **rem = NULL;
    size_t n_add = 0, n_rem = 0;
    if (string_array(r, json_object_get(body, "add"), "add", &add, &n_add) &&
        string_array(r, json_object_get(body, "remove"), "remove", &rem, &n_rem)) {
        rc = cstore_tags_set(campaigns_store(ctx(r)), r->params[0], add, n_add, rem, n_rem, &e);
        if (rc != ESIM_OK)
            fail(r, rc, "add", &e);
        else
            api_device_tags_get(r);
    }
    free(add);
    free(rem);
    json_decref(body);
}

/* ---- diagnosis ---------------------------------------------------------------------- */

void api_device_diagnosis(api_request *r)
{
    if (!ready(r))
        return;
    json_t *out = NULL;
    esim_error e = {{0}};
    esim_err rc = campaigns_diagnose(ctx(r), r->params[0], &out, &e);
    if (rc != ESIM_OK) {
        fail(r, rc, "udid", &e);
        return;
    }
    api_reply_json(r, 200, out);
}
