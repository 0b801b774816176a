/*
 * applicability.c — which eSIM restriction keys a given device honours.
 * iOS silently ignores a restriction it does not know (too old) or one that
 * needs supervision on an unsupervised device; the service warns before
 * sending and the simulator applies only what a real device would.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "restrictions/restrictions.h"

/* Apple's schema (com.apple.applicationaccess.yaml): every eSIM key is
 * supervised-only on iOS, introduced in the version below. */
typedef struct {
    const char *apple_key;
    size_t offset;
    esim_os_version introduced;
} key_requirement;

static const key_requirement requirements[] = {
    {"allowESIMModification", offsetof(esim_policy, allow_esim_modification), {12, 1, 0}},
    {"forcePreserveESIMOnErase", offsetof(esim_policy, force_preserve_esim_on_erase), {17, 2, 0}},
    {"allowESIMOutgoingTransfers",
     offsetof(esim_policy, allow_esim_outgoing_transfers),
     {18, 0, 0}},
    {"allowCellularPlanModification",
     offsetof(esim_policy, allow_cellular_plan_modification),
     {11, 0, 0}},
};
#define REQUIREMENT_COUNT (sizeof requirements / sizeof requirements[0])

#define OS_COMPONENT_MAX 9999

esim_err esim_os_version_parse(const char *s, esim_os_version *out, esim_error *err)
{
    if (!s || !out)
        return esim_fail(err, ESIM_EINVAL, "an OS version and an output are required");
    int parts[3] = {0, 0, 0};
    int n = 0;
    const char *c = s;
    for (;;) {
        if (!isdigit((unsigned char)*c))
            return esim_fail(err, ESIM_EINVAL,
                             "'%.32s' is not an OS version: use numbers such as 17.2 or 12.1.4", s);
        long v = 0;
        while (isdigit((unsigned char)*c)) {
            v = v * 10 + (*c - '0');
            if (v > OS_COMPONENT_MAX)
                return esim_fail(err, ESIM_EINVAL, "OS version '%.32s' has a part over %d", s,
                                 OS_COMPONENT_MAX);
            c++;
        }
        parts[n++] = (int)v;
        if (*c == '\0')
            break;
        if (*c != '.' || n == 3)
            return esim_fail(err, ESIM_EINVAL,
                             "'%.32s' is not an OS version: use at most three numbers separated "
                             "by dots, such as 17.2 or 12.1.4",
                             s);
        c++;
    }
    out->major = parts[0];
    out->minor = parts[1];
    out->patch = parts[2];
    return ESIM_OK;
}

int esim_os_version_cmp(esim_os_version a, esim_os_version b)
{
    if (a.major != b.major)
        return a.major < b.major ? -1 : 1;
    if (a.minor != b.minor)
        return a.minor < b.minor ? -1 : 1;
    if (a.patch != b.patch)
        return a.patch < b.patch ? -1 : 1;
    return 0;
}

static void format_version(esim_os_version v, char *out, size_t len)
{
    if (v.patch)
        snprintf(out, len, "%d.%d.%d", v.major, v.minor, v.patch);
    else
        snprintf(out, len, "%d.%d", v.major, v.minor);
}

static bool key_is_set(const esim_policy *p, const key_requirement *r)
{
    esim_tri t = *(const esim_tri *)((const char *)p + r->offset);
    return t == ESIM_TRI_TRUE || t == ESIM_TRI_FALSE;
}

size_t esim_policy_ignored_keys(const esim_policy *p, const char *os_version, bool supervised,
                                esim_ignored_key out[4])
{
    if (!p || !out)
        return 0;
    esim_os_version device = {0, 0, 0};
    /* An unknown or unreadable version cannot prove a key unsupported. */
    bool version_known = os_version && esim_os_version_parse(os_version, &device, NULL) == ESIM_OK;
    size_t n = 0;
    for (size_t i = 0; i < REQUIREMENT_COUNT; i++) {
        const key_requirement *r = &requirements[i];
        if (!key_is_set(p, r))
            continue;
        bool too_old = version_known && esim_os_version_cmp(device, r->introduced) < 0;
        if (supervised && !too_old)
            continue;
        char need[16], have[40];
        format_version(r->introduced, need, sizeof need);
        if (version_known)
            format_version(device, have, sizeof have);
        out[n].key = r->apple_key;
        if (!supervised && too_old)
            snprintf(out[n].reason, sizeof out[n].reason,
                     "needs a supervised device and iOS %s or later (device has %s)", need, have);
        else if (!supervised)
            snprintf(out[n].reason, sizeof out[n].reason, "needs a supervised device");
        else
            snprintf(out[n].reason, sizeof out[n].reason, "needs iOS %s or later (device has %s)",
                     need, have);
        n++;
    }
    return n;
}

esim_policy esim_policy_effective(const esim_policy *p, const char *os_version, bool supervised)
{
    esim_policy eff = {0};
    if (!p)
        return eff;
    eff = *p;
    esim_ignored_key ignored[4];
    size_t n = esim_policy_ignored_keys(p, os_version, supervised, ignored);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < REQUIREMENT_COUNT; j++)
            if (strcmp(ignored[i].key, requirements[j].apple_key) == 0)
                *(esim_tri *)((char *)&eff + requirements[j].offset) = ESIM_TRI_UNSET;
    return eff;
}
