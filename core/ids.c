/*
 * ids.c — validators for the identifiers eSIM management deals in: EIDs
 * (ISO 7064 MOD 97-10), ICCIDs (Luhn), activation codes (SGP.22 "LPA:1$"),
 * host names, Windows MatchingIDs, APNs tokens and UDIDs. Each refusal says
 * what was wrong in words a person can act on.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "core/esim.h"

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* The 32-digit number mod 97, computed digit by digit (it has 106 bits). */
static unsigned eid_mod97(const char *eid)
{
    unsigned r = 0;
    for (size_t i = 0; i < ESIM_EID_LEN; i++)
        r = (r * 10 + (unsigned)(eid[i] - '0')) % 97;
    return r;
}

static esim_err eid_shape(const char *eid, esim_error *err)
{
    if (!eid || !*eid)
        return esim_fail(err, ESIM_EINVAL, "EID is empty: it has 32 digits, e.g. 89882119900000000000000000001654");
    size_t n = strlen(eid);
    if (n != ESIM_EID_LEN)
        return esim_fail(err, ESIM_EINVAL, "EID has %zu characters: it must have exactly 32 digits", n);
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)eid[i]))
            return esim_fail(err, ESIM_EINVAL, "EID has a non-digit at position %zu: it must have exactly 32 digits", i + 1);
    return ESIM_OK;
}

esim_err esim_eid_validate(const char *eid, esim_error *err)
{
    esim_err rc = eid_shape(eid, err);
    if (rc != ESIM_OK)
        return rc;
    if (eid_mod97(eid) == 1)
        return ESIM_OK;
    char zeroed[ESIM_EID_LEN + 1];
    memcpy(zeroed, eid, sizeof zeroed);
    zeroed[30] = zeroed[31] = '0';
    unsigned expected = 98 - eid_mod97(zeroed);
    return esim_fail(err, ESIM_EINVAL, "EID check digits do not match: expected %02u, found %c%c",
                     expected, eid[30], eid[31]);
}

esim_err esim_eid_set_check_digits(char eid[ESIM_EID_LEN + 1], esim_error *err)
{
    esim_err rc = eid_shape(eid, err);
    if (rc != ESIM_OK)
        return rc;
    eid[30] = eid[31] = '0';
    unsigned check = 98 - eid_mod97(eid);
    eid[30] = (char)('0' + check / 10);
    eid[31] = (char)('0' + check % 10);
    return ESIM_OK;
}

/* Luhn check digit for the first |n| digits of |s|. */
static char luhn_digit(const char *s, size_t n)
{
    unsigned sum = 0;
    bool twice = true; /* the rightmost payload digit is doubled */
    for (size_t i = n; i-- > 0;) {
        unsigned d = (unsigned)(s[i] - '0');
        if (twice) {
            d *= 2;
            if (d > 9)
                d -= 9;
        }
        sum += d;
        twice = !twice;
    }
    return (char)('0' + (10 - sum % 10) % 10);
}

static esim_err iccid_shape(const char *iccid, esim_error *err)
{
    if (!iccid || !*iccid)
        return esim_fail(err, ESIM_EINVAL, "ICCID is empty: it has 18 to 20 digits starting with 89");
    size_t n = strlen(iccid);
    if (n < 18 || n > 20)
        return esim_fail(err, ESIM_EINVAL, "ICCID has %zu characters: it must have 18 to 20 digits", n);
    if (!all_digits(iccid, n))
        return esim_fail(err, ESIM_EINVAL, "ICCID must be digits only");
    return ESIM_OK;
}

esim_err esim_iccid_validate(const char *iccid, esim_error *err)
{
    esim_err rc = iccid_shape(iccid, err);
    if (rc != ESIM_OK)
        return rc;
    if (strncmp(iccid, "89", 2) != 0)
        return esim_fail(err, ESIM_EINVAL, "ICCID must start with 89 (telecom), found %.2s", iccid);
    size_t n = strlen(iccid);
    char want = luhn_digit(iccid, n - 1);
    if (iccid[n - 1] != want)
        return esim_fail(err, ESIM_EINVAL, "ICCID check digit does not match: expected %c, found %c",
                         want, iccid[n - 1]);
    return ESIM_OK;
}

esim_err esim_iccid_set_check_digit(char *iccid, esim_error *err)
{
    esim_err rc = iccid_shape(iccid, err);
    if (rc != ESIM_OK)
        return rc;
    size_t n = strlen(iccid);
    iccid[n - 1] = luhn_digit(iccid, n - 1);
    return ESIM_OK;
}

esim_err esim_fqdn_validate(const char *fqdn, esim_error *err)
{
    if (!fqdn || !*fqdn)
        return esim_fail(err, ESIM_EINVAL, "host name is empty: expected something like smdp.example.com");
    size_t n = strlen(fqdn);
    if (n > 253)
        return esim_fail(err, ESIM_EINVAL, "host name is %zu characters long: at most 253", n);
    size_t label = 0;
    for (size_t i = 0; i <= n; i++) {
        char c = fqdn[i];
        if (c == '.' || c == '\0') {
            if (label == 0)
                return esim_fail(err, ESIM_EINVAL, "host name '%s' has an empty label", fqdn);
            if (fqdn[i - 1] == '-')
                return esim_fail(err, ESIM_EINVAL, "host name '%s' has a label ending in '-'", fqdn);
            label = 0;
            continue;
        }
        if (!isalnum((unsigned char)c) && c != '-')
            return esim_fail(err, ESIM_EINVAL,
                             "host name '%s' has '%c' at position %zu: use letters, digits, '-' and '.'",
                             fqdn, isprint((unsigned char)c) ? c : '?', i + 1);
        if (label == 0 && c == '-')
            return esim_fail(err, ESIM_EINVAL, "host name '%s' has a label starting with '-'", fqdn);
        if (++label > 63)
            return esim_fail(err, ESIM_EINVAL, "host name '%s' has a label over 63 characters", fqdn);
    }
    return ESIM_OK;
}

/* Copies the next '$'-separated field of |*p| into |out|; advances *p. */
static esim_err next_field(const char **p, char *out, size_t out_len, const char *what,
                           esim_error *err)
{
    const char *end = strchr(*p, '$');
    size_t n = end ? (size_t)(end - *p) : strlen(*p);
    if (n >= out_len)
        return esim_fail(err, ESIM_EINVAL, "activation code: %s is longer than %zu characters", what,
                         out_len - 1);
    memcpy(out, *p, n);
    out[n] = '\0';
    *p = end ? end + 1 : *p + n;
    return ESIM_OK;
}

esim_err esim_activation_code_parse(const char *code, esim_activation_code *out, esim_error *err)
{
    static const char hint[] = "expected LPA:1$<SM-DP+ address>$<matching ID>";
    if (!code || strncmp(code, "LPA:", 4) != 0)
        return esim_fail(err, ESIM_EINVAL, "activation code must start with 'LPA:': %s", hint);
    if (strncmp(code + 4, "1$", 2) != 0)
        return esim_fail(err, ESIM_EINVAL, "activation code format '%.1s' is not 1: %s", code + 4, hint);
    for (const char *c = code; *c; c++)
        if (!isprint((unsigned char)*c) || *c == ' ')
            return esim_fail(err, ESIM_EINVAL, "activation code contains a space or control character");
    esim_activation_code ac = {0};
    const char *p = code + 6;
    esim_err rc;
    if ((rc = next_field(&p, ac.smdp_address, sizeof ac.smdp_address, "the SM-DP+ address", err)))
        return rc;
    if ((rc = esim_fqdn_validate(ac.smdp_address, err)) != ESIM_OK)
        return esim_fail(err, ESIM_EINVAL, "activation code: SM-DP+ address '%s' is not a host name: %s",
                         ac.smdp_address, hint);
    bool more = p[-1] == '$';
    if (more && (rc = next_field(&p, ac.matching_id, sizeof ac.matching_id, "the matching ID", err)))
        return rc;
    for (const char *c = ac.matching_id; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '-')
            return esim_fail(err, ESIM_EINVAL,
                             "activation code: matching ID may hold only letters, digits and '-'");
    more = more && p[-1] == '$';
    if (more && (rc = next_field(&p, ac.smdp_oid, sizeof ac.smdp_oid, "the SM-DP+ OID", err)))
        return rc;
    for (const char *c = ac.smdp_oid; *c; c++)
        if (!isdigit((unsigned char)*c) && *c != '.')
            return esim_fail(err, ESIM_EINVAL, "activation code: SM-DP+ OID must be dotted digits");
    more = more && p[-1] == '$';
    if (more) {
        if (strcmp(p, "1") != 0)
            return esim_fail(err, ESIM_EINVAL,
                             "activation code: the confirmation-code flag must be 1 when present");
        ac.confirmation_code_required = true;
    }
    *out = ac;
    return ESIM_OK;
}

esim_err esim_windows_matching_id_validate(const char *id, esim_error *err)
{
    static const char hint[] = "expected four groups of 5 hex digits, e.g. 0A1B2-C3D4E-5F6A7-B8C9D";
    if (!id || strlen(id) != 23)
        return esim_fail(err, ESIM_EINVAL, "MatchingID has the wrong length: %s", hint);
    for (size_t i = 0; i < 23; i++) {
        bool dash = (i % 6 == 5);
        if (dash ? id[i] != '-' : !isxdigit((unsigned char)id[i]))
            return esim_fail(err, ESIM_EINVAL, "MatchingID has '%c' at position %zu: %s",
                             isprint((unsigned char)id[i]) ? id[i] : '?', i + 1, hint);
    }
    return ESIM_OK;
}

esim_err esim_push_token_validate(const char *hex, esim_error *err)
{
    if (!hex || !*hex)
        return esim_fail(err, ESIM_EINVAL, "device token is empty: expected 64 hex digits");
    size_t n = strlen(hex);
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)hex[i]))
            return esim_fail(err, ESIM_EINVAL, "device token has a non-hex character at position %zu", i + 1);
    if (n % 2 || n < 64 || n > 200)
        return esim_fail(err, ESIM_EINVAL,
                         "device token has %zu hex digits: expected an even number from 64 to 200", n);
    return ESIM_OK;
}

esim_err esim_udid_validate(const char *udid, esim_error *err)
{
    if (!udid || !*udid)
        return esim_fail(err, ESIM_EINVAL, "UDID is empty");
    size_t n = strlen(udid);
    if (n > 64)
        return esim_fail(err, ESIM_EINVAL, "UDID is %zu characters long: at most 64", n);
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)udid[i]) && udid[i] != '-')
            return esim_fail(err, ESIM_EINVAL,
                             "UDID has an unexpected character at position %zu: letters, digits and '-' only",
                             i + 1);
    return ESIM_OK;
}
