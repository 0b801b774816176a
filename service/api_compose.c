/*
 * api_compose.c — the admin API's JSON command object turned into an MDM
 * command plist with the plist/ builders. Keys are snake_case; every key is
 * checked against the request type, so a typo is a 400 naming the key
 * rather than a command silently missing an option.
 */
#include <string.h>

#include "restrictions/restrictions.h"
#include "service/service_internal.h"

static esim_err bad(char field[96], const char *key, esim_error *err, const char *what)
{
    snprintf(field, 96, "command%s%s", key ? "." : "", key ? key : "");
    return esim_fail(err, ESIM_EINVAL, "%s: %s", field, what);
}

/* Every key of |obj| must be in |allowed| (NULL-terminated). */
static esim_err only_keys(json_t *obj, const char *const *allowed, const char *prefix,
                          char field[96], esim_error *err)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok) {
            snprintf(field, 96, "%s.%s", prefix, key);
            return esim_fail(err, ESIM_EINVAL, "%s: unknown key for this request type", field);
        }
    }
    return ESIM_OK;
}

static esim_err get_bool(json_t *cmd, const char *key, bool *out, char field[96], esim_error *err)
{
    json_t *v = json_object_get(cmd, key);
    if (!v)
        return ESIM_OK;
    if (!json_is_boolean(v))
        return bad(field, key, err, "must be true or false");
    *out = json_is_true(v);
    return ESIM_OK;
}

static esim_err get_string(json_t *cmd, const char *key, bool required, const char **out,
                           char field[96], esim_error *err)
{
    json_t *v = json_object_get(cmd, key);
    if (!v) {
        if (required)
            return bad(field, key, err, "is required");
        return ESIM_OK;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strlen(json_string_value(v)) != json_string_length(v))
        return bad(field, key, err, "must be a non-empty string");
    *out = json_string_value(v);
    return ESIM_OK;
}

/* The builder's own message names the problem; prefix it with the field. */
static esim_err builder_failed(esim_err rc, char field[96], const char *key, esim_error *err)
{
    if (rc == ESIM_ENOMEM)
        return rc;
    esim_error inner = {{0}};
    if (err)
        inner = *err;
    snprintf(field, 96, "command%s%s", key ? "." : "", key ? key : "");
    return esim_fail(err, ESIM_EINVAL, "%s: %s", field, inner.msg);
}

static esim_err compose_restrictions(json_t *r, const esim_cmd_opts *opts, esim_cmd *out,
                                     const char *identifier, const char *display_name,
                                     char field[96], esim_error *err)
{
    static const char *const words[] = {"esim_modification", "preserve_esim_on_erase",
                                        "esim_outgoing_transfers", "cellular_plan_modification",
                                        NULL};
    if (!json_is_object(r))
        return bad(field, "restrictions", err, "must be an object");
    esim_err rc = only_keys(r, words, "command.restrictions", field, err);
    if (rc != ESIM_OK)
        return rc;
    esim_policy p = {0};
    const char *key;
    json_t *v;
    json_object_foreach(r, key, v)
    {
        const char *word = json_is_string(v)  ? json_string_value(v)
                           : json_is_true(v)  ? "true"
                           : json_is_false(v) ? "false"
                                              : NULL;
        snprintf(field, 96, "command.restrictions.%s", key);
        if (!word)
            return esim_fail(err, ESIM_EINVAL,
                             "%s: must be a string (allow|deny) or, for "
                             "preserve_esim_on_erase, true|false",
                             field);
        esim_error inner = {{0}};
        if (esim_policy_set_word(&p, key, word, &inner) != ESIM_OK)
            return esim_fail(err, ESIM_EINVAL, "%s: %s", field, inner.msg);
    }
    if (esim_policy_is_empty(&p))
        return bad(field, "restrictions", err,
                   "sets nothing: give at least one of "
                   "esim_modification, preserve_esim_on_erase, esim_outgoing_transfers, "
                   "cellular_plan_modification");
    esim_profile_opts po = {.identifier = identifier ? identifier : "com.esim-mdm.restrictions",
                            .display_name = display_name ? display_name : "eSIM restrictions"};
    esim_buf profile = {0};
    rc = esim_policy_to_profile(&p, &po, NULL, &profile, err);
    if (rc == ESIM_OK)
        rc = esim_cmd_install_profile(profile.data, profile.len, opts, out, err);
    esim_buf_free(&profile);
    return rc == ESIM_OK ? rc : builder_failed(rc, field, "restrictions", err);
}

static esim_err compose_install_profile(json_t *cmd, const esim_cmd_opts *opts, esim_cmd *out,
                                        char field[96], esim_error *err)
{
    static const char *const keys[] = {"request_type",
                                       "request_requires_network_tether",
                                       "restrictions",
                                       "payload",
                                       "identifier",
                                       "display_name",
                                       NULL};
    esim_err rc = only_keys(cmd, keys, "command", field, err);
    const char *identifier = NULL, *display_name = NULL, *payload = NULL;
    if (rc == ESIM_OK)
        rc = get_string(cmd, "identifier", false, &identifier, field, err);
    if (rc == ESIM_OK)
        rc = get_string(cmd, "display_name", false, &display_name, field, err);
    if (rc == ESIM_OK)
        rc = get_string(cmd, "payload", false, &payload, field, err);
    if (rc != ESIM_OK)
        return rc;
    json_t *restrictions = json_object_get(cmd, "restrictions");
    if (!restrictions == !payload)
        return bad(field, "restrictions", err,
                   "InstallProfile needs exactly one of restrictions (an object) or payload "
                   "(the profile, base64)");
    if (restrictions)
        return compose_restrictions(restrictions, opts, out, identifier, display_name, field, err);
    esim_buf bytes = {0};
    if (esim_base64_decode(payload, strlen(payload), &bytes, NULL) != ESIM_OK || bytes.len == 0) {
        esim_buf_free(&bytes);
        return bad(field, "payload", err, "must be base64 of a configuration profile");
    }
    rc = esim_cmd_install_profile(bytes.data, bytes.len, opts, out, err);
    esim_buf_free(&bytes);
    return rc == ESIM_OK ? rc : builder_failed(rc, field, "payload", err);
}

static esim_err compose_erase(json_t *cmd, const esim_cmd_opts *opts, esim_cmd *out, char field[96],
                              esim_error *err)
{
    static const char *const keys[] = {"request_type",
                                       "request_requires_network_tether",
                                       "preserve_data_plan",
                                       "disallow_proximity_setup",
                                       "pin",
                                       "obliteration_behavior",
                                       NULL};
    esim_erase_opts eo = {0};
    esim_err rc = only_keys(cmd, keys, "command", field, err);
    if (rc == ESIM_OK)
        rc = get_bool(cmd, "preserve_data_plan", &eo.preserve_data_plan, field, err);
    if (rc == ESIM_OK)
        rc = get_bool(cmd, "disallow_proximity_setup", &eo.disallow_proximity_setup, field, err);
    if (rc == ESIM_OK)
        rc = get_string(cmd, "pin", false, &eo.pin, field, err);
    if (rc == ESIM_OK)
        rc = get_string(cmd, "obliteration_behavior", false, &eo.obliteration_behavior, field, err);
    if (rc != ESIM_OK)
        return rc;
    rc = esim_cmd_erase_device(&eo, opts, out, err);
    return rc == ESIM_OK ? rc : builder_failed(rc, field, NULL, err);
}

static esim_err compose_device_information(json_t *cmd, const esim_cmd_opts *opts, esim_cmd *out,
                                           char field[96], esim_error *err)
{
    static const char *const keys[] = {"request_type", "request_requires_network_tether", "queries",
                                       NULL};
    esim_err rc = only_keys(cmd, keys, "command", field, err);
    if (rc != ESIM_OK)
        return rc;
    json_t *q = json_object_get(cmd, "queries");
    size_t n = json_array_size(q);
    if (!json_is_array(q) || n == 0 || n > 256)
        return bad(field, "queries", err,
                   "must be a non-empty array of query names, as [\"ServiceSubscriptions\"]");
    const char *queries[256];
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(q, i);
        if (!json_is_string(v) || json_string_length(v) == 0)
            return bad(field, "queries", err, "every query must be a non-empty string");
        queries[i] = json_string_value(v);
    }
    rc = esim_cmd_device_information(queries, n, opts, out, err);
    return rc == ESIM_OK ? rc : builder_failed(rc, field, "queries", err);
}

esim_err api_compose_command(json_t *cmd, esim_cmd *out, char field[96], esim_error *err)
{
    snprintf(field, 96, "command");
    if (!json_is_object(cmd))
        return esim_fail(err, ESIM_EINVAL, "command: must be an object with a request_type");
    const char *type = NULL;
    esim_err rc = get_string(cmd, "request_type", true, &type, field, err);
    if (rc != ESIM_OK)
        return rc;
    esim_cmd_opts opts = {0};
    rc = get_bool(cmd, "request_requires_network_tether", &opts.request_requires_network_tether,
                  field, err);
    if (rc != ESIM_OK)
        return rc;

    if (strcmp(type, "RefreshCellularPlans") == 0) {
        static const char *const keys[] = {"request_type", "request_requires_network_tether",
                                           "esim_server_url", NULL};
        const char *url = NULL;
        rc = only_keys(cmd, keys, "command", field, err);
        if (rc == ESIM_OK)
            rc = get_string(cmd, "esim_server_url", true, &url, field, err);
        if (rc == ESIM_OK) {
            rc = esim_cmd_refresh_plans(url, &opts, out, err);
            if (rc != ESIM_OK)
                rc = builder_failed(rc, field, "esim_server_url", err);
        }
        return rc;
    }
    if (strcmp(type, "EraseDevice") == 0)
        return compose_erase(cmd, &opts, out, field, err);
    if (strcmp(type, "InstallProfile") == 0)
        return compose_install_profile(cmd, &opts, out, field, err);
    if (strcmp(type, "RemoveProfile") == 0) {
        static const char *const keys[] = {"request_type", "request_requires_network_tether",
                                           "identifier", NULL};
        const char *id = NULL;
        rc = only_keys(cmd, keys, "command", field, err);
        if (rc == ESIM_OK)
            rc = get_string(cmd, "identifier", true, &id, field, err);
        if (rc == ESIM_OK && (rc = esim_cmd_remove_profile(id, &opts, out, err)) != ESIM_OK)
            rc = builder_failed(rc, field, "identifier", err);
        return rc;
    }
    if (strcmp(type, "ProfileList") == 0) {
        static const char *const keys[] = {"request_type", "request_requires_network_tether",
                                           "managed_only", NULL};
        bool managed_only = false;
        rc = only_keys(cmd, keys, "command", field, err);
        if (rc == ESIM_OK)
            rc = get_bool(cmd, "managed_only", &managed_only, field, err);
        if (rc == ESIM_OK && (rc = esim_cmd_profile_list(managed_only, &opts, out, err)) != ESIM_OK)
            rc = builder_failed(rc, field, NULL, err);
        return rc;
    }
    if (strcmp(type, "DeviceInformation") == 0)
        return compose_device_information(cmd, &opts, out, field, err);
    snprintf(field, 96, "command.request_type");
    return esim_fail(
        err, ESIM_EINVAL,
        "command.request_type: unknown request type '%.64s'; known: RefreshCellularPlans, "
        "EraseDevice, InstallProfile, RemoveProfile, ProfileList, DeviceInformation "
        "(or PUT a raw command plist to /v1/enqueue/{udids})",
        type);
}
