/*
 * device.c — the virtual iOS device: identity, installed configuration
 * profiles and the restrictions they add up to, the commands it answers as
 * iOS does, the user actions a person can try on the phone (each checked
 * against the effective restrictions), erase, and its crash-safe JSON file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "plist/esim_plist.h"
#include "sim/sim_internal.h"

#define RESTRICTIONS_TYPE "com.apple.applicationaccess"

/* A configuration profile as read (InstallProfile, or the state file),
 * with its limits: strings past them are cut (InstallProfile) or refused
 * (the state file). */
typedef struct {
    char identifier[256];
    char uuid[64];
    char display_name[256];
    bool has_policy;
    esim_policy policy; /* the profile's restrictions payloads merged */
    char first_payload_type[64];
} profile_in;

/* ... and as the device keeps it: its four strings in one block of their
 * own lengths (the arrays above are 640 bytes per installed profile, most of
 * it empty, on every simulated iPhone: issue 17). */
typedef struct {
    char *identifier; /* the block: identifier, uuid, display_name, payload type */
    const char *uuid, *display_name, *first_payload_type;
    bool has_policy;
    esim_policy policy;
} dev_profile;

static esim_err profile_keep(const profile_in *in, dev_profile *out)
{
    size_t a = strlen(in->identifier) + 1, b = strlen(in->uuid) + 1,
           c = strlen(in->display_name) + 1, t = strlen(in->first_payload_type) + 1;
    char *m = malloc(a + b + c + t);
    if (!m)
        return ESIM_ENOMEM;
    memcpy(m, in->identifier, a);
    memcpy(m + a, in->uuid, b);
    memcpy(m + a + b, in->display_name, c);
    memcpy(m + a + b + c, in->first_payload_type, t);
    out->identifier = m;
    out->uuid = m + a;
    out->display_name = m + a + b;
    out->first_payload_type = m + a + b + c;
    out->has_policy = in->has_policy;
    out->policy = in->policy;
    return ESIM_OK;
}

struct sim_device {
    const sim_pki *pki;
    char udid[65];
    char serial[32];
    char os_version[16];
    char product_name[32];
    char imei[16];
    bool supervised;
    bool enrolled;
    unsigned char token[32];
    char push_magic[ESIM_UUID_LEN + 1];
    sim_identity id; /* made lazily: none until the device first enrols */
    dev_profile *profiles;
    size_t n_profiles;
    sim_euicc *euicc;
    sim_device_quirks quirks;
    bool reuse_identity_on_erase;
    bool dirty;
};

/* ---- creation and accessors --------------------------------------------------- */

void sim_device_new_push_identity(sim_device *d)
{
    esim_random_bytes(d->token, sizeof d->token);
    esim_uuid_new(d->push_magic);
    for (char *p = d->push_magic; *p; p++) /* PushMagic is uppercase on iOS */
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    d->dirty = true;
}

static void derive_imei(sim_device *d)
{
    uint64_t h = esim_hash_str(d->udid);
    snprintf(d->imei, sizeof d->imei, "35%013llu", (unsigned long long)(h % 10000000000000ull));
}

esim_err sim_device_new(const sim_pki *pki, const sim_device_spec *spec, sim_device **out,
                        esim_error *err)
{
    if (!pki || !spec || !out)
        return esim_fail(err, ESIM_EINVAL, "sim_device_new needs a PKI and a spec");
    esim_err rc = esim_udid_validate(spec->udid, err);
    if (rc != ESIM_OK)
        return rc;
    esim_os_version v;
    if (spec->os_version && (rc = esim_os_version_parse(spec->os_version, &v, err)) != ESIM_OK)
        return rc;
    sim_device *d = calloc(1, sizeof *d);
    if (!d)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    d->pki = pki;
    snprintf(d->udid, sizeof d->udid, "%s", spec->udid);
    if ((rc = sim_copy(d->os_version, sizeof d->os_version,
                       spec->os_version ? spec->os_version : "18.1", "OS version", err)) !=
            ESIM_OK ||
        (rc = sim_copy(d->product_name, sizeof d->product_name,
                       spec->product_name ? spec->product_name : "iPhone16,1", "product name",
                       err)) != ESIM_OK ||
        (spec->serial &&
         (rc = sim_copy(d->serial, sizeof d->serial, spec->serial, "serial", err)) != ESIM_OK)) {
        free(d);
        return rc;
    }
    if (!spec->serial) {
        /* An Apple-looking 12-character serial from the UDID. */
        size_t n = strlen(d->udid), k = 0;
        for (size_t i = n; i-- > 0 && k < 12;)
            if (d->udid[i] != '-')
                d->serial[k++] =
                    (char)(d->udid[i] >= 'a' && d->udid[i] <= 'z' ? d->udid[i] - 32 : d->udid[i]);
        d->serial[k] = '\0';
    }
    d->supervised = spec->supervised;
    derive_imei(d);
    rc = sim_euicc_new(pki, spec->eid, &d->euicc, err);
    if (rc != ESIM_OK) {
        free(d);
        return rc;
    }
    sim_device_new_push_identity(d);
    d->dirty = true;
    *out = d;
    return ESIM_OK;
}

void sim_device_free(sim_device *d)
{
    if (!d)
        return;
    sim_euicc_free(d->euicc);
    sim_identity_clear(&d->id);
    for (size_t i = 0; i < d->n_profiles; i++)
        free(d->profiles[i].identifier);
    free(d->profiles);
    free(d);
}

const char *sim_device_udid(const sim_device *d)
{
    return d->udid;
}
const char *sim_device_os_version(const sim_device *d)
{
    return d->os_version;
}

const char *sim_device_serial(const sim_device *d)
{
    return d->serial;
}

const char *sim_device_imei(const sim_device *d)
{
    return d->imei;
}

const char *sim_device_product_name(const sim_device *d)
{
    return d->product_name;
}
bool sim_device_supervised(const sim_device *d)
{
    return d->supervised;
}
bool sim_device_enrolled(const sim_device *d)
{
    return d->enrolled;
}
sim_euicc *sim_device_euicc(sim_device *d)
{
    return d->euicc;
}
const sim_euicc *sim_device_euicc_const(const sim_device *d)
{
    return d->euicc;
}
size_t sim_device_profile_count(const sim_device *d)
{
    return d->n_profiles;
}
bool sim_device_dirty(const sim_device *d)
{
    return d->dirty || sim_euicc_dirty(d->euicc);
}

const char *sim_device_profile_identifier(const sim_device *d, size_t i)
{
    return i < d->n_profiles ? d->profiles[i].identifier : NULL;
}

void sim_device_set_enrolled(sim_device *d, bool enrolled)
{
    if (d->enrolled != enrolled)
        d->dirty = true;
    d->enrolled = enrolled;
}

const unsigned char *sim_device_push_token(const sim_device *d, size_t *len)
{
    if (len)
        *len = sizeof d->token;
    return d->token;
}

const char *sim_device_push_magic(const sim_device *d)
{
    return d->push_magic;
}

void sim_device_set_reuse_identity_on_erase(sim_device *d, bool reuse)
{
    d->reuse_identity_on_erase = reuse;
}

void sim_device_set_quirks(sim_device *d, const sim_device_quirks *q)
{
    if (q)
        d->quirks = *q;
}

esim_policy sim_device_restrictions_declared(const sim_device *d)
{
    esim_policy p = {0};
    for (size_t i = 0; i < d->n_profiles; i++)
        if (d->profiles[i].has_policy)
            esim_policy_merge(&p, &d->profiles[i].policy); /* most restrictive wins */
    return p;
}

esim_policy sim_device_restrictions(const sim_device *d)
{
    esim_policy p = sim_device_restrictions_declared(d);
    /* What an unsupervised device or an older iOS ignores does not apply. */
    return esim_policy_effective(&p, d->os_version, d->supervised);
}

/* ---- identity --------------------------------------------------------------------- */

static esim_err ensure_identity(sim_device *d, esim_error *err)
{
    if (d->id.der.len)
        return ESIM_OK;
    /* Its own key and the SCEP CA's certificate for it, as at enrolment. */
    esim_err rc = sim_identity_make(d->pki, d->udid, &d->id, err);
    d->dirty = true;
    return rc;
}

esim_err sim_device_sign(const sim_device *d, const void *body, size_t len, esim_buf *out,
                         esim_error *err)
{
    esim_err rc = ensure_identity((sim_device *)d, err);
    if (rc != ESIM_OK)
        return rc;
    /* Detached CMS over the exact body bytes, leaf certificate included:
     * what iOS puts in Mdm-Signature (with the issuing CA, as a SCEP chain). */
    esim_buf der = {0};
    rc = sim_identity_sign(d->pki, &d->id, body, len, &der, err);
    if (rc == ESIM_OK)
        rc = esim_base64_encode(der.data, der.len, out);
    esim_buf_free(&der);
    if (rc != ESIM_OK)
        return esim_fail(err, ESIM_ECRYPTO, "could not sign the message for %s", d->udid);
    return ESIM_OK;
}

/* PEM of a DER certificate: base64 in 64-character lines. */
esim_err sim_pem_append(esim_buf *out, const esim_buf *der)
{
    esim_buf b64 = {0};
    esim_err rc = esim_base64_encode(der->data, der->len, &b64);
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(out, "-----BEGIN CERTIFICATE-----\n");
    for (size_t i = 0; rc == ESIM_OK && i < b64.len; i += 64) {
        rc = esim_buf_append(out, b64.data + i, b64.len - i < 64 ? b64.len - i : 64);
        if (rc == ESIM_OK)
            rc = esim_buf_append_str(out, "\n");
    }
    if (rc == ESIM_OK)
        rc = esim_buf_append_str(out, "-----END CERTIFICATE-----\n");
    esim_buf_free(&b64);
    return rc;
}

esim_err sim_device_identity(const sim_device *d, const esim_buf **der, esim_error *err)
{
    esim_err rc = ensure_identity((sim_device *)d, err);
    *der = rc == ESIM_OK ? &d->id.der : NULL;
    return rc;
}

const unsigned char *sim_device_identity_key(const sim_device *d)
{
    return d->id.key;
}

/* ---- answers ----------------------------------------------------------------------- */

/* An answer being made: its body and the Status it carries. */
typedef struct {
    esim_buf *body;
    esim_status status;
} answer;

static esim_err build(sim_device *d, esim_status st, const char *uuid,
                      const esim_error_chain_entry *chain, size_t n, plist_t extra, answer *out,
                      esim_error *err)
{
    esim_buf_reset(out->body);
    out->status = st;
    return esim_msg_build_result(d->udid, st, uuid, chain, n, extra, ESIM_PLIST_XML, out->body,
                                 err);
}

static esim_err answer_error(sim_device *d, const char *uuid, int64_t code, const char *domain,
                             const char *text, answer *out, esim_error *err)
{
    esim_error_chain_entry e = {0};
    e.code = code;
    snprintf(e.domain, sizeof e.domain, "%s", domain);
    snprintf(e.localized_description, sizeof e.localized_description, "%.500s", text);
    snprintf(e.us_english_description, sizeof e.us_english_description, "%.500s", text);
    return build(d, ESIM_STATUS_ERROR, uuid, &e, 1, NULL, out, err);
}

esim_err sim_device_not_now(sim_device *d, const char *command_uuid, esim_buf *result,
                            esim_error *err)
{
    answer a = {.body = result};
    return build(d, ESIM_STATUS_NOT_NOW, command_uuid, NULL, 0, NULL, &a, err);
}

void sim_cmd_outcome_free(sim_cmd_outcome *o)
{
    if (o)
        esim_buf_free(&o->result);
}

static const char *dict_str(plist_t dict, const char *key)
{
    plist_t n = plist_dict_get_item(dict, key);
    if (!n || plist_get_node_type(n) != PLIST_STRING)
        return NULL;
    return plist_get_string_ptr(n, NULL);
}

static bool dict_bool(plist_t dict, const char *key)
{
    plist_t n = plist_dict_get_item(dict, key);
    uint8_t b = 0;
    if (n && plist_get_node_type(n) == PLIST_BOOLEAN)
        plist_get_bool_val(n, &b);
    return b != 0;
}

static esim_err install_profile(sim_device *d, const char *uuid, plist_t cmd, answer *out,
                                esim_error *err)
{
    plist_t payload = plist_dict_get_item(cmd, "Payload");
    if (!payload || plist_get_node_type(payload) != PLIST_DATA)
        return build(d, ESIM_STATUS_COMMAND_FORMAT_ERROR, uuid, NULL, 0, NULL, out, err);
    uint64_t len = 0;
    const char *bytes = plist_get_data_ptr(payload, &len);
    plist_t root = NULL;
    esim_error perr;
    if (esim_profile_parse(bytes, (size_t)len, NULL, &root, NULL, &perr) != ESIM_OK) {
        char msg[600];
        snprintf(msg, sizeof msg, "The profile could not be installed: %s", perr.msg);
        return answer_error(d, uuid, 1000, "MCProfileErrorDomain", msg, out, err);
    }
    profile_in p = {0};
    const char *ident = dict_str(root, "PayloadIdentifier");
    snprintf(p.identifier, sizeof p.identifier, "%s", ident ? ident : "");
    snprintf(p.uuid, sizeof p.uuid, "%s",
             dict_str(root, "PayloadUUID") ? dict_str(root, "PayloadUUID") : "");
    snprintf(p.display_name, sizeof p.display_name, "%s",
             dict_str(root, "PayloadDisplayName") ? dict_str(root, "PayloadDisplayName")
                                                  : p.identifier);
    plist_t content = plist_dict_get_item(root, "PayloadContent");
    esim_err rc = ESIM_OK;
    char why[600] = "";
    if (!ident || !*ident)
        snprintf(why, sizeof why, "The profile has no PayloadIdentifier");
    for (uint32_t i = 0; !why[0] && content && plist_get_node_type(content) == PLIST_ARRAY &&
                         i < plist_array_get_size(content);
         i++) {
        plist_t pl = plist_array_get_item(content, i);
        const char *type = dict_str(pl, "PayloadType");
        if (!type) {
            snprintf(why, sizeof why, "Payload %u has no PayloadType", i);
            break;
        }
        if (!p.first_payload_type[0])
            snprintf(p.first_payload_type, sizeof p.first_payload_type, "%s", type);
        if (strcmp(type, RESTRICTIONS_TYPE) == 0) {
            esim_policy pol;
            if (esim_policy_from_payload(pl, &pol, &perr) != ESIM_OK) {
                snprintf(why, sizeof why, "The restrictions payload is invalid: %s", perr.msg);
                break;
            }
            /* Several restrictions payloads, in one profile or several: the
             * most restrictive value of each key wins. */
            esim_policy_merge(&p.policy, &pol);
            p.has_policy = true;
        }
    }
    plist_free(root);
    if (why[0])
        return answer_error(d, uuid, 1000, "MCProfileErrorDomain", why, out, err);
    /* Installing a profile with an identifier already present replaces it. */
    size_t i;
    for (i = 0; i < d->n_profiles; i++)
        if (strcmp(d->profiles[i].identifier, p.identifier) == 0)
            break;
    dev_profile kept;
    if (profile_keep(&p, &kept) != ESIM_OK)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (i == d->n_profiles) {
        dev_profile *n = realloc(d->profiles, (d->n_profiles + 1) * sizeof *n);
        if (!n) {
            free(kept.identifier);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        d->profiles = n;
        d->n_profiles++;
    } else {
        free(d->profiles[i].identifier);
    }
    d->profiles[i] = kept;
    d->dirty = true;
    rc = build(d, ESIM_STATUS_ACKNOWLEDGED, uuid, NULL, 0, NULL, out, err);
    return rc;
}

static esim_err remove_profile(sim_device *d, const char *uuid, plist_t cmd, answer *out,
                               esim_error *err)
{
    const char *ident = dict_str(cmd, "Identifier");
    if (!ident)
        return build(d, ESIM_STATUS_COMMAND_FORMAT_ERROR, uuid, NULL, 0, NULL, out, err);
    for (size_t i = 0; i < d->n_profiles; i++)
        if (strcmp(d->profiles[i].identifier, ident) == 0) {
            free(d->profiles[i].identifier);
            memmove(&d->profiles[i], &d->profiles[i + 1],
                    (d->n_profiles - i - 1) * sizeof *d->profiles);
            d->n_profiles--;
            d->dirty = true;
            return build(d, ESIM_STATUS_ACKNOWLEDGED, uuid, NULL, 0, NULL, out, err);
        }
    char msg[400];
    snprintf(msg, sizeof msg, "The profile \"%s\" is not installed.", ident);
    return answer_error(d, uuid, 1011, "MCProfileErrorDomain", msg, out, err);
}

static esim_err profile_list(sim_device *d, const char *uuid, answer *out, esim_error *err)
{
    plist_t extra = plist_new_dict(), list = plist_new_array();
    for (size_t i = 0; i < d->n_profiles; i++) {
        const dev_profile *p = &d->profiles[i];
        plist_t e = plist_new_dict(), content = plist_new_array(), pl = plist_new_dict();
        plist_dict_set_item(e, "PayloadIdentifier", plist_new_string(p->identifier));
        plist_dict_set_item(e, "PayloadUUID", plist_new_string(p->uuid));
        plist_dict_set_item(e, "PayloadDisplayName", plist_new_string(p->display_name));
        plist_dict_set_item(e, "PayloadVersion", plist_new_uint(1));
        plist_dict_set_item(e, "IsManaged", plist_new_bool(1));
        plist_dict_set_item(
            pl, "PayloadType",
            plist_new_string(p->first_payload_type[0] ? p->first_payload_type : "Configuration"));
        plist_array_append_item(content, pl);
        plist_dict_set_item(e, "PayloadContent", content);
        plist_array_append_item(list, e);
    }
    plist_dict_set_item(extra, "ProfileList", list);
    esim_err rc = build(d, ESIM_STATUS_ACKNOWLEDGED, uuid, NULL, 0, extra, out, err);
    plist_free(extra);
    return rc;
}

/* ServiceSubscriptions: one entry per line the eUICC has enabled, as iOS
 * lists active plans; how a server verifies an eSIM is really installed. */
static plist_t service_subscriptions(const sim_device *d)
{
    plist_t arr = plist_new_array();
    const sim_profile *p = sim_euicc_enabled(d->euicc);
    plist_t s = plist_new_dict();
    if (!d->quirks.no_esim) /* a phone without an eUICC has no EID to show */
        plist_dict_set_item(s, "EID", plist_new_string(sim_euicc_eid(d->euicc)));
    plist_dict_set_item(s, "Slot", plist_new_string("CTSubscriptionSlotOne"));
    plist_dict_set_item(s, "IMEI", plist_new_string(d->imei));
    plist_dict_set_item(s, "IsDataPreferred", plist_new_bool(p != NULL));
    plist_dict_set_item(s, "IsVoicePreferred", plist_new_bool(p != NULL));
    plist_dict_set_item(s, "Label", plist_new_string(p ? "Primary" : ""));
    if (p) {
        plist_dict_set_item(s, "ICCID", plist_new_string(p->iccid));
        plist_dict_set_item(s, "CurrentCarrierNetwork", plist_new_string(p->service_provider));
        plist_dict_set_item(s, "CarrierSettingsVersion", plist_new_string("60.0"));
    }
    plist_array_append_item(arr, s);
    return arr;
}

static bool wants(plist_t queries, const char *key)
{
    if (!queries || plist_get_node_type(queries) != PLIST_ARRAY)
        return true; /* no Queries: answer everything */
    for (uint32_t i = 0; i < plist_array_get_size(queries); i++) {
        plist_t q = plist_array_get_item(queries, i);
        if (plist_get_node_type(q) == PLIST_STRING &&
            strcmp(plist_get_string_ptr(q, NULL), key) == 0)
            return true;
    }
    return false;
}

static esim_err device_information(sim_device *d, const char *uuid, plist_t cmd, answer *out,
                                   esim_error *err)
{
    plist_t q = plist_dict_get_item(cmd, "Queries");
    plist_t r = plist_new_dict();
    struct {
        const char *key;
        const char *val;
    } strs[] = {{"UDID", d->udid},
                {"SerialNumber", d->serial},
                {"OSVersion", d->os_version},
                {"ProductName", d->product_name},
                {"Model", "MTUW3LL/A"},
                {"ModelName", "iPhone"},
                {"DeviceName", "Simulated iPhone"},
                {"IMEI", d->imei},
                {"BuildVersion", "22B83"}};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        if (wants(q, strs[i].key))
            plist_dict_set_item(r, strs[i].key, plist_new_string(strs[i].val));
    if (wants(q, "IsSupervised"))
        plist_dict_set_item(r, "IsSupervised", plist_new_bool(d->supervised));
    if (wants(q, "ServiceSubscriptions"))
        plist_dict_set_item(r, "ServiceSubscriptions", service_subscriptions(d));
    plist_t extra = plist_new_dict();
    plist_dict_set_item(extra, "QueryResponses", r);
    esim_err rc = build(d, ESIM_STATUS_ACKNOWLEDGED, uuid, NULL, 0, extra, out, err);
    plist_free(extra);
    return rc;
}

/* A command we cannot read still deserves an answer naming its UUID. */
static void raw_uuid(const void *cmd, size_t len, char *out, size_t n)
{
    plist_t root = NULL;
    snprintf(out, n, "%s", "");
    if (esim_plist_parse_dict(cmd, len, NULL, &root, NULL) == ESIM_OK) {
        const char *u = dict_str(root, "CommandUUID");
        if (u)
            snprintf(out, n, "%s", u);
        plist_free(root);
    }
}

esim_err sim_device_handle_command(sim_device *d, const void *cmd, size_t len, sim_cmd_outcome *out,
                                   esim_error *err)
{
    if (!d || !out)
        return esim_fail(err, ESIM_EINVAL,
                         "sim_device_handle_command needs a device and an outcome");
    memset(out, 0, sizeof *out);
    esim_cmd_parsed c = {0};
    esim_error perr;
    esim_err rc;
    answer a = {.body = &out->result};
    if (esim_cmd_parse(cmd, len, NULL, &c, &perr) != ESIM_OK) {
        raw_uuid(cmd, len, out->command_uuid, sizeof out->command_uuid);
        if (!out->command_uuid[0])
            snprintf(out->command_uuid, sizeof out->command_uuid, "unknown");
        rc = build(d, ESIM_STATUS_COMMAND_FORMAT_ERROR, out->command_uuid, NULL, 0, NULL, &a, err);
        out->status = a.status;
        return rc;
    }
    snprintf(out->command_uuid, sizeof out->command_uuid, "%s", c.command_uuid);
    const char *uuid = c.command_uuid, *type = c.request_type;
    if (d->quirks.locked) {
        /* Locked (or busy): the device does not keep the command; the
         * server must deliver it again later. */
        rc = build(d, ESIM_STATUS_NOT_NOW, uuid, NULL, 0, NULL, &a, err);
    } else if (strcmp(type, "InstallProfile") == 0) {
        rc = install_profile(d, uuid, c.command, &a, err);
    } else if (strcmp(type, "RemoveProfile") == 0) {
        rc = remove_profile(d, uuid, c.command, &a, err);
    } else if (strcmp(type, "ProfileList") == 0) {
        rc = profile_list(d, uuid, &a, err);
    } else if (strcmp(type, "DeviceInformation") == 0) {
        rc = device_information(d, uuid, c.command, &a, err);
    } else if (strcmp(type, "RefreshCellularPlans") == 0) {
        const char *url = dict_str(c.command, "eSIMServerURL");
        if (!url || !*url || strlen(url) >= sizeof out->esim_server_url) {
            rc = build(d, ESIM_STATUS_COMMAND_FORMAT_ERROR, uuid, NULL, 0, NULL, &a, err);
        } else if (d->quirks.no_esim) {
            rc = answer_error(d, uuid, 36002, "CTCellularPlanErrorDomain",
                              "This device does not support eSIM.", &a, err);
        } else if (d->quirks.fail_download) {
            rc = answer_error(d, uuid, 36003, "CTCellularPlanErrorDomain",
                              "The cellular plan could not be refreshed because the device is "
                              "busy. Try again later.",
                              &a, err);
            /* Busy is passing (36003 is the retryable one): the next try works. */
            d->quirks.fail_download = false;
        } else {
            snprintf(out->esim_server_url, sizeof out->esim_server_url, "%s", url);
            out->download = true;
            rc = ESIM_OK;
        }
    } else if (strcmp(type, "EraseDevice") == 0) {
        /* iOS acknowledges first, then wipes; it does not answer again. */
        out->erase = true;
        out->preserve_data_plan = dict_bool(c.command, "PreserveDataPlan");
        rc = build(d, ESIM_STATUS_ACKNOWLEDGED, uuid, NULL, 0, NULL, &a, err);
    } else {
        rc = answer_error(d, uuid, 12021, "MCMDMErrorDomain", "Unknown command", &a, err);
    }
    esim_cmd_parsed_free(&c);
    if (!out->download)
        out->status = a.status;
    return rc;
}

static esim_err finish_download(sim_device *d, const char *command_uuid,
                                const sim_download_result *r, answer *result, esim_error *err)
{
    char msg[600];
    if (r->err == ESIM_OK) {
        sim_result er = sim_euicc_enable(d->euicc, r->iccid);
        if (er == SIM_RES_OK)
            return build(d, ESIM_STATUS_ACKNOWLEDGED, command_uuid, NULL, 0, NULL, result, err);
        snprintf(msg, sizeof msg, "The eSIM %s was installed but could not be enabled: %s",
                 r->iccid, sim_result_name(er));
        return answer_error(d, command_uuid, (int64_t)er, "SGP22.eUICC", msg, result, err);
    }
    if (r->subject_code[0]) {
        snprintf(msg, sizeof msg, "SM-DP+ refused the download: %s", r->message);
        esim_error_chain_entry chain[2] = {0};
        chain[0].code = 36001;
        snprintf(chain[0].domain, sizeof chain[0].domain, "CTCellularPlanErrorDomain");
        snprintf(chain[0].localized_description, sizeof chain[0].localized_description,
                 "The cellular plan could not be installed.");
        snprintf(chain[0].us_english_description, sizeof chain[0].us_english_description,
                 "The cellular plan could not be installed.");
        /* The SM-DP+'s own reason, subject/reason codes as SGP.22 gives them. */
        chain[1].code = 1;
        snprintf(chain[1].domain, sizeof chain[1].domain, "SGP22.ES9Plus.%s.%s", r->subject_code,
                 r->reason_code);
        snprintf(chain[1].localized_description, sizeof chain[1].localized_description, "%.500s",
                 msg);
        snprintf(chain[1].us_english_description, sizeof chain[1].us_english_description, "%.500s",
                 msg);
        return build(d, ESIM_STATUS_ERROR, command_uuid, chain, 2, NULL, result, err);
    }
    snprintf(msg, sizeof msg, "The cellular plan server could not be reached: %s", r->message);
    if (r->err != ESIM_EUNAVAIL)
        return answer_error(d, command_uuid, 36001, "CTCellularPlanErrorDomain", msg, result, err);
    /* Unreachable (refused, reset, timed out): as an iPhone says it, the
     * plan error with the URL loading error under it, NSURLErrorDomain
     * -1004 "Could not connect to the server", or -1003 when the host name
     * did not resolve (NSURLErrorCannotFindHost). Nothing was downloaded. */
    const char *url_words = r->host_unknown
                                ? "A server with the specified hostname could not be found."
                                : "Could not connect to the server.";
    esim_error_chain_entry chain[2] = {0};
    chain[0].code = 36001;
    snprintf(chain[0].domain, sizeof chain[0].domain, "CTCellularPlanErrorDomain");
    snprintf(chain[0].localized_description, sizeof chain[0].localized_description, "%.500s", msg);
    snprintf(chain[0].us_english_description, sizeof chain[0].us_english_description, "%.500s",
             msg);
    chain[1].code = r->host_unknown ? -1003 : -1004;
    snprintf(chain[1].domain, sizeof chain[1].domain, "NSURLErrorDomain");
    snprintf(chain[1].localized_description, sizeof chain[1].localized_description, "%s",
             url_words);
    snprintf(chain[1].us_english_description, sizeof chain[1].us_english_description, "%s",
             url_words);
    return build(d, ESIM_STATUS_ERROR, command_uuid, chain, 2, NULL, result, err);
}

esim_err sim_device_finish_download(sim_device *d, const char *command_uuid,
                                    const sim_download_result *r, esim_buf *result,
                                    esim_status *status, esim_error *err)
{
    answer a = {.body = result};
    esim_err rc = finish_download(d, command_uuid, r, &a, err);
    if (status)
        *status = a.status;
    return rc;
}

void sim_device_erase(sim_device *d, bool keep_esim)
{
    for (size_t i = 0; i < d->n_profiles; i++)
        free(d->profiles[i].identifier);
    free(d->profiles);
    d->profiles = NULL;
    d->n_profiles = 0;
    d->enrolled = false;
    /* A wiped phone is a new install: new push token, new SCEP identity
     * (unless told to keep the identity, for services that cannot re-bind). */
    sim_device_new_push_identity(d);
    if (!d->reuse_identity_on_erase)
        sim_identity_clear(&d->id); /* a new key with the new identity */
    if (!keep_esim)
        sim_euicc_memory_reset(d->euicc);
    d->dirty = true;
}

/* ---- user actions ---------------------------------------------------------------------- */

static const char *const action_words[] = {"delete-esim", "transfer-esim", "erase-all-content",
                                           "passcode-wipe", "findmy-erase"};

const char *sim_user_action_name(sim_user_action a)
{
    return (unsigned)a < 5 ? action_words[a] : "unknown";
}

esim_err sim_user_action_parse(const char *word, sim_user_action *out, esim_error *err)
{
    for (unsigned i = 0; word && i < 5; i++)
        if (strcmp(word, action_words[i]) == 0) {
            *out = (sim_user_action)i;
            return ESIM_OK;
        }
    return esim_fail(err, ESIM_EINVAL,
                     "unknown user action '%s': use delete-esim, transfer-esim, erase-all-content, "
                     "passcode-wipe or findmy-erase",
                     word ? word : "");
}

static const sim_profile *operational_esim(const sim_device *d)
{
    const sim_profile *en = sim_euicc_enabled(d->euicc);
    if (en && en->profile_class == SIM_CLASS_OPERATIONAL)
        return en;
    for (size_t i = 0; i < sim_euicc_profile_count(d->euicc); i++)
        if (sim_euicc_profile_at(d->euicc, i)->profile_class == SIM_CLASS_OPERATIONAL)
            return sim_euicc_profile_at(d->euicc, i);
    return NULL;
}

/* Disables (when enabled) and deletes the eSIM, as Settings does. */
static bool remove_esim(sim_device *d, const char *iccid, char *why, size_t n)
{
    const sim_profile *p = sim_euicc_find(d->euicc, iccid);
    if (p && p->state == SIM_PROFILE_ENABLED) {
        sim_result r = sim_euicc_disable(d->euicc, iccid);
        if (r != SIM_RES_OK) {
            snprintf(why, n, "the eUICC refused to disable %s: %s", iccid, sim_result_name(r));
            return false;
        }
    }
    sim_result r = sim_euicc_delete(d->euicc, iccid);
    if (r != SIM_RES_OK) {
        snprintf(why, n, "the eUICC refused to delete %s: %s", iccid, sim_result_name(r));
        return false;
    }
    return true;
}

esim_err sim_device_user_action(sim_device *d, sim_user_action a, sim_action_outcome *out,
                                esim_error *err)
{
    if (!d || !out)
        return esim_fail(err, ESIM_EINVAL, "a user action needs a device");
    memset(out, 0, sizeof *out);
    esim_policy eff = sim_device_restrictions(d);
    const sim_profile *esim = operational_esim(d);
    char iccid[SIM_ICCID_MAX + 1] = "";
    if (esim)
        snprintf(iccid, sizeof iccid, "%s", esim->iccid);
    switch (a) {
    case SIM_ACTION_DELETE_ESIM:
    case SIM_ACTION_TRANSFER_ESIM: {
        if (!esim) {
            snprintf(out->reason, sizeof out->reason, "there is no eSIM on this device");
            return esim_fail(err, ESIM_ESTATE, "device %s has no eSIM to %s", d->udid,
                             a == SIM_ACTION_DELETE_ESIM ? "delete" : "transfer");
        }
        if (a == SIM_ACTION_DELETE_ESIM && eff.allow_esim_modification == ESIM_TRI_FALSE) {
            snprintf(out->reason, sizeof out->reason,
                     "allowESIMModification is false (Delete eSIM is greyed out)");
            return ESIM_OK;
        }
        if (a == SIM_ACTION_TRANSFER_ESIM && eff.allow_esim_outgoing_transfers == ESIM_TRI_FALSE) {
            snprintf(
                out->reason, sizeof out->reason,
                "allowESIMOutgoingTransfers is false (Transfer to another iPhone is unavailable)");
            return ESIM_OK;
        }
        char why[200];
        if (!remove_esim(d, iccid, why, sizeof why)) {
            snprintf(out->reason, sizeof out->reason, "%s", why);
            return ESIM_OK;
        }
        out->allowed = true;
        snprintf(out->reason, sizeof out->reason, "%s %s",
                 a == SIM_ACTION_DELETE_ESIM ? "deleted eSIM"
                                             : "transferred eSIM to another iPhone; removed",
                 iccid);
        d->dirty = true;
        return ESIM_OK;
    }
    case SIM_ACTION_ERASE_ALL_CONTENT:
    case SIM_ACTION_PASSCODE_WIPE:
    case SIM_ACTION_FINDMY_ERASE: {
        /* forcePreserveESIMOnErase keeps the eSIM for Erase All Content and
         * Settings and the passcode wipe; Apple documents that a Find My
         * erase removes it anyway. */
        bool keep =
            a != SIM_ACTION_FINDMY_ERASE && eff.force_preserve_esim_on_erase == ESIM_TRI_TRUE;
        sim_device_erase(d, keep);
        out->allowed = true;
        out->erased = true;
        out->esim_kept = keep && esim != NULL;
        snprintf(out->reason, sizeof out->reason, "device erased; %s",
                 !esim  ? "there was no eSIM"
                 : keep ? "eSIM kept (forcePreserveESIMOnErase)"
                 : a == SIM_ACTION_FINDMY_ERASE
                     ? "eSIM removed (a Find My erase ignores forcePreserveESIMOnErase)"
                     : "eSIM removed");
        return ESIM_OK;
    }
    }
    return esim_fail(err, ESIM_EINVAL, "unknown user action %d", (int)a);
}

/* ---- JSON -------------------------------------------------------------------------------- */

static const char *tri_word(esim_tri t)
{
    return t == ESIM_TRI_TRUE ? "true" : t == ESIM_TRI_FALSE ? "false" : "unset";
}

static bool tri_parse(const char *s, esim_tri *out)
{
    if (!s)
        return false;
    if (strcmp(s, "true") == 0)
        *out = ESIM_TRI_TRUE;
    else if (strcmp(s, "false") == 0)
        *out = ESIM_TRI_FALSE;
    else if (strcmp(s, "unset") == 0)
        *out = ESIM_TRI_UNSET;
    else
        return false;
    return true;
}

static json_t *policy_json(const esim_policy *p)
{
    return json_pack("{s:s, s:s, s:s, s:s}", "allowESIMModification",
                     tri_word(p->allow_esim_modification), "forcePreserveESIMOnErase",
                     tri_word(p->force_preserve_esim_on_erase), "allowESIMOutgoingTransfers",
                     tri_word(p->allow_esim_outgoing_transfers), "allowCellularPlanModification",
                     tri_word(p->allow_cellular_plan_modification));
}

static bool policy_from_json(const json_t *j, esim_policy *p)
{
    return tri_parse(sim_json_str(j, "allowESIMModification"), &p->allow_esim_modification) &&
           tri_parse(sim_json_str(j, "forcePreserveESIMOnErase"),
                     &p->force_preserve_esim_on_erase) &&
           tri_parse(sim_json_str(j, "allowESIMOutgoingTransfers"),
                     &p->allow_esim_outgoing_transfers) &&
           tri_parse(sim_json_str(j, "allowCellularPlanModification"),
                     &p->allow_cellular_plan_modification);
}

static json_t *device_json(const sim_device *d)
{
    esim_buf tok = {0};
    esim_hex_encode(d->token, sizeof d->token, &tok);
    json_t *profiles = json_array();
    for (size_t i = 0; i < d->n_profiles; i++) {
        const dev_profile *p = &d->profiles[i];
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:s}", "identifier", p->identifier, "uuid", p->uuid,
                      "display_name", p->display_name, "payload_type", p->first_payload_type);
        if (p->has_policy)
            json_object_set_new(o, "restrictions", policy_json(&p->policy));
        json_array_append_new(profiles, o);
    }
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:s, s:b, s:b, s:s, s:s, s:o, s:o}", "udid", d->udid, "serial", d->serial,
        "os_version", d->os_version, "product_name", d->product_name, "supervised", d->supervised,
        "enrolled", d->enrolled, "push_token", tok.data ? (const char *)tok.data : "", "push_magic",
        d->push_magic, "profiles", profiles, "euicc", sim_euicc_to_json(d->euicc));
    esim_buf_free(&tok);
    sim_identity_to_json(&d->id, j);
    return j;
}

esim_err sim_device_save(sim_device *d, const char *path, esim_error *err)
{
    json_t *j = device_json(d);
    if (!j)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_err rc = sim_json_save(j, path, 0600, err);
    json_decref(j);
    if (rc == ESIM_OK) {
        d->dirty = false;
        sim_euicc_mark_clean(d->euicc);
    }
    return rc;
}

esim_err sim_device_load(const sim_pki *pki, const char *path, sim_device **out, esim_error *err)
{
    json_t *j = NULL;
    esim_err rc = sim_json_load(path, 4u << 20, &j, err);
    if (rc != ESIM_OK)
        return rc;
    sim_device *d = calloc(1, sizeof *d);
    if (!d) {
        json_decref(j);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    d->pki = pki;
    esim_buf tok = {0};
    const char *tokhex = sim_json_str(j, "push_token");
    json_t *profiles = json_object_get(j, "profiles");
    esim_os_version v;
    if ((rc = sim_copy(d->udid, sizeof d->udid, sim_json_str(j, "udid"), "udid", err)) != ESIM_OK ||
        (rc = esim_udid_validate(d->udid, err)) != ESIM_OK ||
        (rc = sim_copy(d->serial, sizeof d->serial, sim_json_str(j, "serial"), "serial", err)) !=
            ESIM_OK ||
        (rc = sim_copy(d->os_version, sizeof d->os_version, sim_json_str(j, "os_version"),
                       "os_version", err)) != ESIM_OK ||
        (rc = esim_os_version_parse(d->os_version, &v, err)) != ESIM_OK ||
        (rc = sim_copy(d->product_name, sizeof d->product_name, sim_json_str(j, "product_name"),
                       "product_name", err)) != ESIM_OK ||
        (rc = sim_copy(d->push_magic, sizeof d->push_magic, sim_json_str(j, "push_magic"),
                       "push_magic", err)) != ESIM_OK)
        goto fail;
    if (!tokhex || esim_hex_decode(tokhex, &tok, NULL) != ESIM_OK || tok.len != sizeof d->token ||
        !json_is_boolean(json_object_get(j, "supervised")) ||
        !json_is_boolean(json_object_get(j, "enrolled")) || !json_is_array(profiles)) {
        rc = esim_fail(err, ESIM_EINVAL,
                       "%s: push_token, supervised, enrolled or profiles malformed", path);
        goto fail;
    }
    memcpy(d->token, tok.data, sizeof d->token);
    d->supervised = json_is_true(json_object_get(j, "supervised"));
    d->enrolled = json_is_true(json_object_get(j, "enrolled"));
    if ((rc = sim_identity_from_json(j, path, &d->id, err)) != ESIM_OK)
        goto fail;
    if (json_array_size(profiles)) {
        d->profiles = calloc(json_array_size(profiles), sizeof *d->profiles);
        if (!d->profiles) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            goto fail;
        }
    }
    size_t i;
    json_t *it;
    json_array_foreach(profiles, i, it)
    {
        profile_in in = {0}, *p = &in;
        const char *pt = sim_json_str(it, "payload_type");
        json_t *pol = json_object_get(it, "restrictions");
        if ((rc = sim_copy(p->identifier, sizeof p->identifier, sim_json_str(it, "identifier"),
                           "identifier", err)) != ESIM_OK ||
            (rc = sim_copy(p->uuid, sizeof p->uuid, sim_json_str(it, "uuid"), "uuid", err)) !=
                ESIM_OK ||
            (rc = sim_copy(p->display_name, sizeof p->display_name,
                           sim_json_str(it, "display_name"), "display_name", err)) != ESIM_OK ||
            (rc = sim_copy(p->first_payload_type, sizeof p->first_payload_type, pt, "payload_type",
                           err)) != ESIM_OK)
            goto fail;
        if (pol && !policy_from_json(pol, &p->policy)) {
            rc = esim_fail(err, ESIM_EINVAL, "%s: profile %s has malformed restrictions", path,
                           p->identifier);
            goto fail;
        }
        p->has_policy = pol != NULL;
        if (profile_keep(p, &d->profiles[i]) != ESIM_OK) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            goto fail;
        }
        d->n_profiles++;
    }
    rc = sim_euicc_from_json(pki, json_object_get(j, "euicc"), &d->euicc, err);
    if (rc != ESIM_OK)
        goto fail;
    derive_imei(d);
    esim_buf_free(&tok);
    json_decref(j);
    *out = d;
    return ESIM_OK;
fail:
    esim_buf_free(&tok);
    json_decref(j);
    sim_device_free(d);
    return rc;
}

esim_err sim_device_describe_json(const sim_device *d, esim_buf *out, esim_error *err)
{
    esim_policy decl = sim_device_restrictions_declared(d), eff = sim_device_restrictions(d);
    json_t *esims = json_array(), *profiles = json_array();
    for (size_t i = 0; i < sim_euicc_profile_count(d->euicc); i++) {
        const sim_profile *p = sim_euicc_profile_at(d->euicc, i);
        json_array_append_new(
            esims, json_pack("{s:s, s:s, s:s, s:s, s:i}", "iccid", p->iccid, "state",
                             p->state == SIM_PROFILE_ENABLED ? "enabled" : "disabled", "class",
                             p->profile_class == SIM_CLASS_OPERATIONAL ? "operational"
                             : p->profile_class == SIM_CLASS_TEST      ? "test"
                                                                       : "provisioning",
                             "service_provider", p->service_provider, "ppr", (int)p->ppr));
    }
    for (size_t i = 0; i < d->n_profiles; i++)
        json_array_append_new(profiles, json_string(d->profiles[i].identifier));
    json_t *j =
        json_pack("{s:s, s:s, s:b, s:b, s:s, s:{s:o, s:o}, s:o, s:o, s:I}", "udid", d->udid, "eid",
                  sim_euicc_eid(d->euicc), "enrolled", d->enrolled, "supervised", d->supervised,
                  "os_version", d->os_version, "restrictions", "declared", policy_json(&decl),
                  "effective", policy_json(&eff), "profiles", profiles, "esims", esims,
                  "pending_notifications", (json_int_t)sim_euicc_notification_count(d->euicc));
    if (!j)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_err rc = esim_buf_append_str(out, s);
    free(s);
    return rc;
}
