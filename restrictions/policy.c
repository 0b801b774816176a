/*
 * policy.c — the eSIM policy model: parsing the words admins type, merging
 * policies the way iOS merges several restrictions payloads, and turning a
 * policy into (and back from) a com.apple.applicationaccess payload.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "restrictions/restrictions.h"

#define RESTRICTIONS_PAYLOAD_TYPE "com.apple.applicationaccess"

/* One row per policy field: everything the model needs to know about a key. */
typedef struct {
    const char *apple_key;
    const char *word_name;  /* as typed on the CLI (underscores or hyphens) */
    size_t offset;          /* of the esim_tri inside esim_policy */
    bool restrictive_value; /* the value that wins a merge */
    bool words_on_off;      /* on|off instead of allow|deny */
} policy_field;

static const policy_field fields[] = {
    {"allowESIMModification", "esim_modification", offsetof(esim_policy, allow_esim_modification),
     false, false},
    {"forcePreserveESIMOnErase", "preserve_esim_on_erase",
     offsetof(esim_policy, force_preserve_esim_on_erase), true, true},
    {"allowESIMOutgoingTransfers", "esim_outgoing_transfers",
     offsetof(esim_policy, allow_esim_outgoing_transfers), false, false},
    {"allowCellularPlanModification", "cellular_plan_modification",
     offsetof(esim_policy, allow_cellular_plan_modification), false, false},
};
#define FIELD_COUNT (sizeof fields / sizeof fields[0])

static esim_tri *field_of(esim_policy *p, const policy_field *f)
{
    return (esim_tri *)((char *)p + f->offset);
}

static esim_tri field_value(const esim_policy *p, const policy_field *f)
{
    return *(const esim_tri *)((const char *)p + f->offset);
}

/* "esim-modification" and "esim_modification" name the same field. */
static bool word_name_matches(const char *typed, const char *canonical)
{
    size_t i = 0;
    for (; typed[i] && canonical[i]; i++) {
        char c = typed[i] == '-' ? '_' : typed[i];
        if (c != canonical[i])
            return false;
    }
    return typed[i] == '\0' && canonical[i] == '\0';
}

esim_err esim_policy_set_word(esim_policy *p, const char *name, const char *word, esim_error *err)
{
    if (!p || !name || !word)
        return esim_fail(err, ESIM_EINVAL, "policy, setting name and value are all required");
    for (size_t i = 0; i < FIELD_COUNT; i++) {
        const policy_field *f = &fields[i];
        if (!word_name_matches(name, f->word_name))
            continue;
        esim_tri v;
        if (f->words_on_off) {
            if (strcmp(word, "on") == 0 || strcmp(word, "true") == 0)
                v = ESIM_TRI_TRUE;
            else if (strcmp(word, "off") == 0 || strcmp(word, "false") == 0)
                v = ESIM_TRI_FALSE;
            else
                return esim_fail(err, ESIM_EINVAL,
                                 "%s must be one of on, off, true, false (got '%.64s')",
                                 f->word_name, word);
        } else {
            if (strcmp(word, "allow") == 0)
                v = ESIM_TRI_TRUE;
            else if (strcmp(word, "deny") == 0)
                v = ESIM_TRI_FALSE;
            else
                return esim_fail(err, ESIM_EINVAL, "%s must be allow or deny (got '%.64s')",
                                 f->word_name, word);
        }
        *field_of(p, f) = v;
        return ESIM_OK;
    }
    return esim_fail(err, ESIM_EINVAL,
                     "unknown eSIM policy setting '%.64s'; known settings: esim_modification, "
                     "preserve_esim_on_erase, esim_outgoing_transfers, "
                     "cellular_plan_modification",
                     name);
}

static esim_tri merge_one(esim_tri a, esim_tri b, bool restrictive_value)
{
    esim_tri winner = restrictive_value ? ESIM_TRI_TRUE : ESIM_TRI_FALSE;
    if (a == ESIM_TRI_UNSET)
        return b;
    if (b == ESIM_TRI_UNSET)
        return a;
    /* Both set: iOS applies the most restrictive of the installed payloads. */
    return (a == winner || b == winner) ? winner : a;
}

void esim_policy_merge(esim_policy *into, const esim_policy *other)
{
    if (!into || !other)
        return;
    for (size_t i = 0; i < FIELD_COUNT; i++) {
        esim_tri *slot = field_of(into, &fields[i]);
        *slot = merge_one(*slot, field_value(other, &fields[i]), fields[i].restrictive_value);
    }
}

bool esim_policy_is_empty(const esim_policy *p)
{
    if (!p)
        return true;
    for (size_t i = 0; i < FIELD_COUNT; i++)
        if (field_value(p, &fields[i]) != ESIM_TRI_UNSET)
            return false;
    return true;
}

/* Values outside the enum are treated as unset rather than trusted. */
static bool tri_is_set(esim_tri t)
{
    return t == ESIM_TRI_TRUE || t == ESIM_TRI_FALSE;
}

plist_t esim_policy_to_payload(const esim_policy *p, const char *payload_identifier)
{
    if (!p)
        return NULL;
    if (!payload_identifier || !*payload_identifier)
        payload_identifier = ESIM_POLICY_DEFAULT_IDENTIFIER ".applicationaccess";
    plist_t payload =
        esim_payload_new(RESTRICTIONS_PAYLOAD_TYPE, payload_identifier, NULL, "eSIM restrictions");
    if (!payload)
        return NULL;
    for (size_t i = 0; i < FIELD_COUNT; i++) {
        esim_tri v = field_value(p, &fields[i]);
        if (!tri_is_set(v))
            continue;
        plist_t b = plist_new_bool(v == ESIM_TRI_TRUE);
        if (!b) {
            plist_free(payload);
            return NULL;
        }
        plist_dict_set_item(payload, fields[i].apple_key, b);
    }
    return payload;
}

esim_err esim_policy_to_profile(const esim_policy *p, const esim_profile_opts *opts,
                                const esim_cert *signer, esim_buf *out, esim_error *err)
{
    if (!p || !out)
        return esim_fail(err, ESIM_EINVAL, "policy and output buffer are required");
    if (esim_policy_is_empty(p))
        return esim_fail(err, ESIM_EINVAL,
                         "the eSIM policy sets nothing: set at least one of esim_modification, "
                         "preserve_esim_on_erase, esim_outgoing_transfers, "
                         "cellular_plan_modification");
    for (size_t i = 0; i < FIELD_COUNT; i++) {
        esim_tri v = field_value(p, &fields[i]);
        if (v != ESIM_TRI_UNSET && !tri_is_set(v))
            return esim_fail(err, ESIM_EINVAL, "%s holds %d, which is not unset, false or true",
                             fields[i].apple_key, (int)v);
    }
    if (signer && (!signer->x509 || !signer->key))
        return esim_fail(err, ESIM_EINVAL, "the signer needs both a certificate and its key");

    esim_profile_opts defaults = {0};
    if (opts)
        defaults = *opts;
    if (!defaults.identifier || !*defaults.identifier)
        defaults.identifier = ESIM_POLICY_DEFAULT_IDENTIFIER;
    if (!defaults.display_name)
        defaults.display_name = "eSIM restrictions";
    if (strlen(defaults.identifier) > 200)
        return esim_fail(err, ESIM_EINVAL, "the profile identifier is over 200 bytes");

    /* The payload identifier extends the profile's, as Apple recommends. */
    char payload_id[256];
    snprintf(payload_id, sizeof payload_id, "%s.applicationaccess", defaults.identifier);
    plist_t payload = esim_policy_to_payload(p, payload_id);
    if (!payload)
        return esim_fail(err, ESIM_ENOMEM, "out of memory building the restrictions payload");

    esim_buf profile = {0};
    esim_err rc = esim_profile_build(&defaults, &payload, 1, ESIM_PLIST_XML, &profile, err);
    plist_free(payload);
    if (rc != ESIM_OK) {
        esim_buf_free(&profile);
        return rc;
    }
    if (signer) {
        esim_buf signed_profile = {0};
        rc = esim_profile_sign(profile.data, profile.len, signer, &signed_profile, err);
        esim_buf_free(&profile);
        if (rc != ESIM_OK) {
            esim_buf_free(&signed_profile);
            return rc;
        }
        profile = signed_profile;
    }
    esim_buf_free(out);
    *out = profile;
    return ESIM_OK;
}

esim_err esim_policy_from_payload(plist_t payload, esim_policy *out, esim_error *err)
{
    if (!payload || !out)
        return esim_fail(err, ESIM_EINVAL, "payload and output policy are required");
    if (plist_get_node_type(payload) != PLIST_DICT)
        return esim_fail(err, ESIM_EINVAL, "a restrictions payload must be a dictionary");
    esim_policy read = {0};
    for (size_t i = 0; i < FIELD_COUNT; i++) {
        plist_t node = plist_dict_get_item(payload, fields[i].apple_key);
        if (!node)
            continue;
        if (plist_get_node_type(node) != PLIST_BOOLEAN)
            return esim_fail(err, ESIM_EINVAL, "%s must be a boolean in a %s payload",
                             fields[i].apple_key, RESTRICTIONS_PAYLOAD_TYPE);
        uint8_t b = 0;
        plist_get_bool_val(node, &b);
        *field_of(&read, &fields[i]) = b ? ESIM_TRI_TRUE : ESIM_TRI_FALSE;
    }
    *out = read;
    return ESIM_OK;
}
