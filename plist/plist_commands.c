/*
 * plist_commands.c — the MDM commands the server sends (PROTOCOLS.md §1):
 * each builder checks its input, wraps the Command dict in the
 * {CommandUUID, Command} envelope and serializes it; plus the reverse parse.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "plist/plist_internal.h"

#define SERVER_URL_HINT                                                                            \
    "use an https:// or http:// URL with a host (https://smdp.example.com/path) or a bare "        \
    "host name (smdp.example.com)"

void esim_cmd_free(esim_cmd *cmd)
{
    if (!cmd)
        return;
    esim_buf_free(&cmd->body);
    memset(cmd, 0, sizeof *cmd);
}

/* ---- eSIMServerURL ----------------------------------------------------------- */

static bool is_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t k = 0; k < n; k++)
        if (!isdigit((unsigned char)s[k]))
            return false;
    return true;
}

/* Host part of an authority: a host name / IPv4 (esim_fqdn_validate accepts
 * both shapes) or a bracketed IPv6 literal, then an optional :port. */
static esim_err check_authority(const char *a, size_t n, const char *url, esim_error *err)
{
    if (n == 0)
        return esim_fail(err, ESIM_EINVAL, "eSIM server URL '%.200s' has no host; %s", url,
                         SERVER_URL_HINT);
    if (memchr(a, '@', n))
        return esim_fail(err, ESIM_EINVAL,
                         "eSIM server URL '%.200s' carries a user name or password; devices must "
                         "not be sent credentials; %s",
                         url, SERVER_URL_HINT);
    size_t host_len = n;
    const char *port = NULL;
    size_t port_len = 0;
    if (a[0] == '[') {
        const char *close = memchr(a, ']', n);
        if (!close || close == a + 1)
            return esim_fail(err, ESIM_EINVAL, "eSIM server URL '%.200s' has a malformed IPv6 host",
                             url);
        for (const char *c = a + 1; c < close; c++)
            if (!isxdigit((unsigned char)*c) && *c != ':' && *c != '.')
                return esim_fail(err, ESIM_EINVAL,
                                 "eSIM server URL '%.200s' has a malformed IPv6 host", url);
        host_len = (size_t)(close - a) + 1;
        if (host_len < n) {
            if (a[host_len] != ':')
                return esim_fail(err, ESIM_EINVAL,
                                 "eSIM server URL '%.200s' has text after its IPv6 host", url);
            port = a + host_len + 1;
            port_len = n - host_len - 1;
        }
    } else {
        const char *colon = memchr(a, ':', n);
        if (colon) {
            host_len = (size_t)(colon - a);
            port = colon + 1;
            port_len = n - host_len - 1;
        }
        if (host_len == 0)
            return esim_fail(err, ESIM_EINVAL, "eSIM server URL '%.200s' has no host; %s", url,
                             SERVER_URL_HINT);
        char host[256];
        if (host_len >= sizeof host)
            return esim_fail(err, ESIM_EINVAL,
                             "eSIM server URL '%.200s' has a host longer than 253 characters", url);
        memcpy(host, a, host_len);
        host[host_len] = '\0';
        esim_error why;
        esim_error_clear(&why);
        if (esim_fqdn_validate(host, &why) != ESIM_OK)
            return esim_fail(err, ESIM_EINVAL,
                             "eSIM server URL '%.200s' has an invalid host (%s); %s", url, why.msg,
                             SERVER_URL_HINT);
    }
    if (port) {
        if (!is_digits(port, port_len) || port_len > 5 || atoi(port) < 1 || atoi(port) > 65535)
            return esim_fail(err, ESIM_EINVAL,
                             "eSIM server URL '%.200s' has an invalid port; use 1 to 65535", url);
    }
    return ESIM_OK;
}

esim_err esim_server_url_normalize(const char *in, char *out, size_t out_len, esim_error *err)
{
    if (!in || !in[0])
        return esim_fail(err, ESIM_EINVAL, "the eSIM server URL is empty; %s", SERVER_URL_HINT);
    if (!out || out_len == 0)
        return esim_fail(err, ESIM_EINVAL, "no room for the eSIM server URL");
    size_t len = strnlen(in, ESIM_SERVER_URL_MAX + 1);
    if (len > ESIM_SERVER_URL_MAX)
        return esim_fail(err, ESIM_EINVAL, "the eSIM server URL is longer than %d bytes; %s",
                         ESIM_SERVER_URL_MAX, SERVER_URL_HINT);
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)in[k];
        if (c <= 0x20 || c >= 0x7F)
            return esim_fail(err, ESIM_EINVAL,
                             "the eSIM server URL '%.200s' contains a space, control or non-ASCII "
                             "character at position %zu; %s (international names in punycode)",
                             in, k + 1, SERVER_URL_HINT);
    }
    const char *sep = strstr(in, "://");
    const char *colon = strchr(in, ':');
    bool has_scheme = sep && colon == sep;
    if (!has_scheme && colon)
        return esim_fail(err, ESIM_EINVAL,
                         "the eSIM server URL '%.200s' is neither an http(s) URL nor a bare host "
                         "name; %s",
                         in, SERVER_URL_HINT);
    char result[ESIM_SERVER_URL_MAX + 16];
    if (has_scheme) {
        size_t scheme_len = (size_t)(sep - in);
        bool https = scheme_len == 5 && strncasecmp(in, "https", 5) == 0;
        bool http = scheme_len == 4 && strncasecmp(in, "http", 4) == 0;
        if (!https && !http)
            return esim_fail(err, ESIM_EINVAL,
                             "the eSIM server URL '%.200s' uses the scheme '%.*s'; %s", in,
                             (int)(scheme_len > 20 ? 20 : scheme_len), in, SERVER_URL_HINT);
        const char *authority = sep + 3;
        size_t auth_len = strcspn(authority, "/?#");
        esim_err rc = check_authority(authority, auth_len, in, err);
        if (rc != ESIM_OK)
            return rc;
        memcpy(result, in, len + 1);
    } else {
        esim_error why;
        esim_error_clear(&why);
        if (strpbrk(in, "/?#:") || esim_fqdn_validate(in, &why) != ESIM_OK)
            return esim_fail(
                err, ESIM_EINVAL, "the eSIM server URL '%.200s' is not valid%s%s%s; %s", in,
                why.msg[0] ? " (" : "", why.msg, why.msg[0] ? ")" : "", SERVER_URL_HINT);
        /* A bare name is what admins type from the operator's paperwork; the
         * device only ever talks TLS to an SM-DP+, so https is the scheme. */
        int n = snprintf(result, sizeof result, "https://%s", in);
        if (n < 0 || (size_t)n > ESIM_SERVER_URL_MAX)
            return esim_fail(err, ESIM_EINVAL,
                             "the eSIM server URL would be longer than %d bytes with https://",
                             ESIM_SERVER_URL_MAX);
    }
    size_t result_len = strlen(result);
    if (result_len >= out_len)
        return esim_fail(err, ESIM_EINVAL, "the eSIM server URL needs %zu bytes of room, %zu given",
                         result_len + 1, out_len);
    memcpy(out, result, result_len + 1);
    return ESIM_OK;
}

/* ---- the envelope ------------------------------------------------------------ */

esim_err plist_finish_command(const char *request_type, plist_t command, const esim_cmd_opts *opts,
                              esim_cmd *out, esim_error *err)
{
    esim_cmd_opts defaults = {0};
    if (!opts)
        opts = &defaults;
    esim_err rc = ESIM_OK;
    plist_t root = NULL;
    if (!command)
        return esim_fail(err, ESIM_ENOMEM, "out of memory building %s", request_type);
    if (opts->format != ESIM_PLIST_XML && opts->format != ESIM_PLIST_BINARY) {
        rc = esim_fail(err, ESIM_EINVAL, "unknown plist format %d; use XML or binary",
                       (int)opts->format);
        goto fail;
    }
    char uuid[sizeof(((esim_cmd *)0)->command_uuid)];
    if (opts->command_uuid) {
        /* Apple's CommandUUID is a string, not necessarily a UUID: any
         * text a plist and a JSON answer can carry. */
        size_t n = strlen(opts->command_uuid);
        bool printable = n > 0 && n < sizeof uuid;
        for (size_t i = 0; printable && i < n; i++)
            printable =
                (unsigned char)opts->command_uuid[i] >= 0x20 && opts->command_uuid[i] != 0x7F;
        if (!printable) {
            rc = esim_fail(err, ESIM_EINVAL,
                           "CommandUUID '%.80s' must be 1 to %zu characters without control "
                           "characters (a UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e is "
                           "usual), or leave it out for a fresh UUID",
                           opts->command_uuid, sizeof uuid - 1);
            goto fail;
        }
        memcpy(uuid, opts->command_uuid, n + 1);
    } else {
        esim_uuid_new(uuid);
    }
    plist_dict_set_item(command, "RequestType", plist_new_string(request_type));
    if (opts->request_requires_network_tether)
        plist_dict_set_item(command, "RequestRequiresNetworkTether", plist_new_bool(1));
    root = plist_new_dict();
    if (!root) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory building %s", request_type);
        goto fail;
    }
    plist_dict_set_item(root, "CommandUUID", plist_new_string(uuid));
    plist_dict_set_item(root, "Command", command);
    command = NULL; /* now owned by root */
    esim_cmd built = {0};
    if ((rc = esim_plist_serialize(root, opts->format, &built.body, err)) != ESIM_OK)
        goto fail;
    memcpy(built.command_uuid, uuid, sizeof uuid);
    snprintf(built.request_type, sizeof built.request_type, "%s", request_type);
    plist_free(root);
    *out = built;
    return ESIM_OK;
fail:
    plist_free(command);
    plist_free(root);
    return rc;
}

/* ---- builders ----------------------------------------------------------------- */

esim_err esim_cmd_refresh_plans(const char *server_url, const esim_cmd_opts *opts, esim_cmd *out,
                                esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the command");
    char url[ESIM_SERVER_URL_MAX + 1];
    esim_err rc = esim_server_url_normalize(server_url, url, sizeof url, err);
    if (rc != ESIM_OK)
        return rc;
    plist_t command = plist_new_dict();
    if (command)
        plist_dict_set_item(command, "eSIMServerURL", plist_new_string(url));
    return plist_finish_command("RefreshCellularPlans", command, opts, out, err);
}

static const char *const obliteration_behaviors[] = {"Default", "DoNotObliterate",
                                                     "ObliterateWithWarning", "Always"};

static esim_err check_profile_bytes(const unsigned char *p, size_t len, const char *key,
                                    esim_error *err)
{
    if (!p && len)
        return esim_fail(err, ESIM_EINVAL, "ReturnToService %s has a length but no bytes", key);
    if (!p)
        return ESIM_OK;
    plist_t root = NULL;
    esim_error why;
    esim_error_clear(&why);
    esim_err rc = esim_profile_parse(p, len, NULL, &root, NULL, &why);
    plist_free(root);
    if (rc != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "ReturnToService %s is not a configuration profile: %s",
                         key, why.msg);
    return ESIM_OK;
}

static esim_err check_erase_opts(const esim_erase_opts *e, esim_error *err)
{
    if (e->pin && (strlen(e->pin) != 6 || !is_digits(e->pin, 6)))
        return esim_fail(err, ESIM_EINVAL,
                         "the Find My PIN must be exactly 6 digits (for example 123456)");
    if (e->obliteration_behavior) {
        bool known = false;
        for (size_t k = 0; k < 4; k++)
            known |= strcmp(e->obliteration_behavior, obliteration_behaviors[k]) == 0;
        if (!known)
            return esim_fail(err, ESIM_EINVAL,
                             "ObliterationBehavior '%.64s' is not one of Default, DoNotObliterate, "
                             "ObliterateWithWarning, Always",
                             e->obliteration_behavior);
    }
    if (!e->return_to_service && (e->rts_wifi_profile || e->rts_mdm_profile ||
                                  e->rts_wifi_profile_len || e->rts_mdm_profile_len))
        return esim_fail(err, ESIM_EINVAL,
                         "Return to Service profiles were given but Return to Service is off");
    esim_err rc =
        check_profile_bytes(e->rts_wifi_profile, e->rts_wifi_profile_len, "WiFiProfileData", err);
    if (rc == ESIM_OK)
        rc = check_profile_bytes(e->rts_mdm_profile, e->rts_mdm_profile_len, "MDMProfileData", err);
    return rc;
}

esim_err esim_cmd_erase_device(const esim_erase_opts *erase, const esim_cmd_opts *opts,
                               esim_cmd *out, esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the command");
    esim_erase_opts plain = {0};
    if (!erase)
        erase = &plain;
    esim_err rc = check_erase_opts(erase, err);
    if (rc != ESIM_OK)
        return rc;
    plist_t command = plist_new_dict();
    if (!command)
        return plist_finish_command("EraseDevice", NULL, opts, out, err);
    if (erase->preserve_data_plan)
        plist_dict_set_item(command, "PreserveDataPlan", plist_new_bool(1));
    if (erase->disallow_proximity_setup)
        plist_dict_set_item(command, "DisallowProximitySetup", plist_new_bool(1));
    if (erase->pin)
        plist_dict_set_item(command, "PIN", plist_new_string(erase->pin));
    if (erase->obliteration_behavior)
        plist_dict_set_item(command, "ObliterationBehavior",
                            plist_new_string(erase->obliteration_behavior));
    if (erase->return_to_service) {
        plist_t rts = plist_new_dict();
        plist_dict_set_item(rts, "Enabled", plist_new_bool(1));
        if (erase->rts_wifi_profile)
            plist_dict_set_item(
                rts, "WiFiProfileData",
                plist_new_data((const char *)erase->rts_wifi_profile, erase->rts_wifi_profile_len));
        if (erase->rts_mdm_profile)
            plist_dict_set_item(
                rts, "MDMProfileData",
                plist_new_data((const char *)erase->rts_mdm_profile, erase->rts_mdm_profile_len));
        plist_dict_set_item(command, "ReturnToService", rts);
    }
    return plist_finish_command("EraseDevice", command, opts, out, err);
}

esim_err esim_cmd_install_profile(const void *profile, size_t len, const esim_cmd_opts *opts,
                                  esim_cmd *out, esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the command");
    plist_t root = NULL;
    esim_error why;
    esim_error_clear(&why);
    esim_err rc = esim_profile_parse(profile, len, NULL, &root, NULL, &why);
    plist_free(root);
    if (rc != ESIM_OK)
        return esim_fail(err, rc == ESIM_ENOMEM ? rc : ESIM_EINVAL,
                         "InstallProfile needs a configuration profile (.mobileconfig, plain or "
                         "CMS-signed): %s",
                         why.msg);
    plist_t command = plist_new_dict();
    if (command)
        plist_dict_set_item(command, "Payload", plist_new_data(profile, len));
    return plist_finish_command("InstallProfile", command, opts, out, err);
}

esim_err esim_cmd_remove_profile(const char *identifier, const esim_cmd_opts *opts, esim_cmd *out,
                                 esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the command");
    if (!identifier || !identifier[0])
        return esim_fail(err, ESIM_EINVAL,
                         "RemoveProfile needs the profile's PayloadIdentifier, for example "
                         "com.example.esim.restrictions");
    if (strlen(identifier) > 1024)
        return esim_fail(err, ESIM_EINVAL, "the profile identifier is longer than 1024 bytes");
    plist_t command = plist_new_dict();
    if (command)
        plist_dict_set_item(command, "Identifier", plist_new_string(identifier));
    return plist_finish_command("RemoveProfile", command, opts, out, err);
}

esim_err esim_cmd_profile_list(bool managed_only, const esim_cmd_opts *opts, esim_cmd *out,
                               esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the command");
    plist_t command = plist_new_dict();
    if (command && managed_only)
        plist_dict_set_item(command, "ManagedOnly", plist_new_bool(1));
    return plist_finish_command("ProfileList", command, opts, out, err);
}

esim_err esim_cmd_device_information(const char *const *queries, size_t n,
                                     const esim_cmd_opts *opts, esim_cmd *out, esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the command");
    if (!queries || n == 0)
        return esim_fail(err, ESIM_EINVAL,
                         "DeviceInformation needs at least one query, for example "
                         "ServiceSubscriptions");
    for (size_t k = 0; k < n; k++) {
        if (!queries[k] || !queries[k][0])
            return esim_fail(err, ESIM_EINVAL, "DeviceInformation query %zu is empty", k + 1);
        for (const char *c = queries[k]; *c; c++)
            if (!isalnum((unsigned char)*c) && *c != '_' && *c != '.')
                return esim_fail(err, ESIM_EINVAL,
                                 "DeviceInformation query '%.64s' is not a query name (letters "
                                 "and digits, such as ServiceSubscriptions or OSVersion)",
                                 queries[k]);
    }
    plist_t command = plist_new_dict();
    if (command) {
        plist_t list = plist_new_array();
        for (size_t k = 0; k < n; k++)
            plist_array_append_item(list, plist_new_string(queries[k]));
        plist_dict_set_item(command, "Queries", list);
    }
    return plist_finish_command("DeviceInformation", command, opts, out, err);
}

/* ---- parse ---------------------------------------------------------------------- */

void esim_cmd_parsed_free(esim_cmd_parsed *cmd)
{
    if (!cmd)
        return;
    plist_free(cmd->root);
    memset(cmd, 0, sizeof *cmd);
}

esim_err esim_cmd_parse(const void *data, size_t len, const esim_parse_limits *limits,
                        esim_cmd_parsed *out, esim_error *err)
{
    if (!out)
        return esim_fail(err, ESIM_EINVAL, "no place to put the command");
    esim_cmd_parsed parsed = {0};
    esim_err rc = esim_plist_parse_dict(data, len, limits, &parsed.root, err);
    if (rc != ESIM_OK)
        return rc;
    const char *what = "command";
    if ((rc = plist_read_string(parsed.root, "CommandUUID", true, parsed.command_uuid,
                                sizeof parsed.command_uuid, what, err)) != ESIM_OK)
        goto fail;
    if (!parsed.command_uuid[0]) {
        rc = esim_fail(err, ESIM_EINVAL, "command: CommandUUID is empty");
        goto fail;
    }
    parsed.command = plist_dict_get_item(parsed.root, "Command");
    if (!parsed.command || plist_get_node_type(parsed.command) != PLIST_DICT) {
        rc = esim_fail(err, ESIM_EINVAL, "command: %s",
                       parsed.command ? "Command must be a dictionary"
                                      : "required key Command is missing");
        goto fail;
    }
    if ((rc = plist_read_string(parsed.command, "RequestType", true, parsed.request_type,
                                sizeof parsed.request_type, "Command", err)) != ESIM_OK)
        goto fail;
    if (!parsed.request_type[0]) {
        rc = esim_fail(err, ESIM_EINVAL, "Command: RequestType is empty");
        goto fail;
    }
    *out = parsed;
    return ESIM_OK;
fail:
    plist_free(parsed.root);
    return rc;
}
