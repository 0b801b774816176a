/*
 * winpc.c — a simulated Windows 11 PC: the eUICCs CSP node tree with its
 * rules, DevInfo/DevDetail/DMClient nodes, and the OMA-DM 1.2 client session
 * engine (SyncML XML read by the strict reader for plain XML of
 * core/xml_plain.c, libxml2 for the rest; written by hand). No I/O: the
 * runtime (winfleet.c) carries the messages and runs the background jobs.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

#include "core/internal.h"
#include "core/xml_plain.h"
#include "sim/sim_internal.h"

#define MAX_PROFILE_NODES 16
#define MAX_SERVER_NODES 8
#define MAX_MSG (1u << 20)
#define MAX_URI 1024

/* Profiles/{ICCID} */
enum {
    PF_SERVER = 1u << 0, /* ServerName set */
    PF_MID = 1u << 1,    /* MatchingID set */
    PF_ENABLED_SET = 1u << 2,
    PF_ENABLED = 1u << 3, /* IsEnabled */
    PF_STARTED = 1u << 4, /* its download job was handed out */
    PF_DISCOVERED = 1u << 5,
};

typedef struct {
    char iccid[SIM_ICCID_MAX + 1];
    char server[256];
    char mid[65];
    uint8_t state; /* 1 Installing, 2 Installed, 3 Deleting, 4 Error */
    uint8_t error; /* ErrorDetail */
    uint8_t flags;
} win_profile;

/* DownloadServers/{name} */
enum {
    SF_AUTO_SET = 1u << 0,
    SF_AUTO = 1u << 1,
    SF_DISC_SET = 1u << 2,
    SF_DISC = 1u << 3,
    SF_STARTED = 1u << 4,
};

typedef struct {
    char name[256];
    uint8_t dstate; /* 1 Requested, 2 Executing, 3 Completed, 4 Failed */
    uint8_t flags;
} win_server;

/* What Atomic rolls back: the CSP's own state. */
typedef struct {
    win_profile *profiles;
    size_t n_prof;
    win_server *servers;
    size_t n_srv;
    bool local_ui;
    int action_status; /* 0 S_OK, 1 S_FALSE */
    bool reset_pending;
    char *pfn;
} csp_state;

struct sim_winpc {
    const sim_pki *pki;
    char device_id[65];
    char man[64], model[64], os[32], provider[64];
    sim_euicc *euicc;
    char *channel_uri;
    csp_state csp;
    sim_identity id; /* made at its first session */
    bool dirty;
    unsigned sessions;
    /* the open session */
    bool in_session;
    uint32_t session_id;
    unsigned msg_id;
    char *target; /* SyncHdr Target of our messages (the server URL) */
    char *url;    /* where the next message goes */
};

/* ---- creation ------------------------------------------------------------------ */

static bool id_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-')
            return false;
    return true;
}

static esim_err copy_or(char *dst, size_t n, const char *v, const char *dflt, const char *what,
                        esim_error *err)
{
    return sim_copy(dst, n, v ? v : dflt, what, err);
}

esim_err sim_winpc_new(const sim_pki *pki, const sim_winpc_spec *spec, sim_winpc **out,
                       esim_error *err)
{
    if (!pki || !spec || !out)
        return esim_fail(err, ESIM_EINVAL, "a Windows PC needs a PKI and a spec");
    *out = NULL;
    if (!id_ok(spec->device_id))
        return esim_fail(err, ESIM_EINVAL, "DeviceID must be 1..64 of [A-Za-z0-9-]");
    sim_winpc *pc = calloc(1, sizeof *pc);
    if (!pc)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    pc->pki = pki;
    snprintf(pc->device_id, sizeof pc->device_id, "%s", spec->device_id);
    esim_err rc;
    if ((rc = copy_or(pc->man, sizeof pc->man, spec->manufacturer, "Simulated", "manufacturer",
                      err)) != ESIM_OK ||
        (rc = copy_or(pc->model, sizeof pc->model, spec->model, "Surface Laptop 7", "model",
                      err)) != ESIM_OK ||
        (rc = copy_or(pc->os, sizeof pc->os, spec->os_version, "10.0.26100.2454", "OS version",
                      err)) != ESIM_OK ||
        (rc = copy_or(pc->provider, sizeof pc->provider, spec->provider_id, "esim-mdm",
                      "provider ID", err)) != ESIM_OK ||
        (rc = sim_euicc_new(pki, spec->eid, &pc->euicc, err)) != ESIM_OK) {
        sim_winpc_free(pc);
        return rc;
    }
    if (strchr(pc->provider, '/')) {
        sim_winpc_free(pc);
        return esim_fail(err, ESIM_EINVAL, "the provider ID may not contain '/'");
    }
    pc->csp.local_ui = true;
    pc->dirty = true;
    *out = pc;
    return ESIM_OK;
}

static void csp_clear(csp_state *c)
{
    free(c->profiles);
    free(c->servers);
    free(c->pfn);
    memset(c, 0, sizeof *c);
}

void sim_winpc_free(sim_winpc *pc)
{
    if (!pc)
        return;
    sim_euicc_free(pc->euicc);
    free(pc->channel_uri);
    csp_clear(&pc->csp);
    sim_identity_clear(&pc->id);
    free(pc->target);
    free(pc->url);
    free(pc);
}

const char *sim_winpc_device_id(const sim_winpc *pc)
{
    return pc->device_id;
}
sim_euicc *sim_winpc_euicc(sim_winpc *pc)
{
    return pc->euicc;
}
const sim_euicc *sim_winpc_euicc_const(const sim_winpc *pc)
{
    return pc->euicc;
}
unsigned sim_winpc_sessions(const sim_winpc *pc)
{
    return pc->sessions;
}
const char *sim_winpc_channel_uri(const sim_winpc *pc)
{
    return pc->channel_uri;
}
bool sim_winpc_dirty(const sim_winpc *pc)
{
    return pc->dirty || sim_euicc_dirty(pc->euicc);
}

esim_err sim_winpc_set_channel_uri(sim_winpc *pc, const char *uri, esim_error *err)
{
    if (uri && strlen(uri) > 2048)
        return esim_fail(err, ESIM_EINVAL, "a channel URI is at most 2048 bytes");
    if ((!uri && !pc->channel_uri) || (uri && pc->channel_uri && strcmp(uri, pc->channel_uri) == 0))
        return ESIM_OK;
    char *c = uri ? strdup(uri) : NULL;
    if (uri && !c)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    free(pc->channel_uri);
    pc->channel_uri = c;
    pc->dirty = true;
    return ESIM_OK;
}

esim_err sim_winpc_identity(sim_winpc *pc, const esim_buf **der, esim_error *err)
{
    *der = NULL;
    if (!pc->id.der.len) {
        /* Its own key and the SCEP CA's certificate for it. */
        esim_err rc = sim_identity_make(pc->pki, pc->device_id, &pc->id, err);
        if (rc != ESIM_OK)
            return rc;
        pc->dirty = true;
    }
    *der = &pc->id.der;
    return ESIM_OK;
}

const unsigned char *sim_winpc_identity_key(const sim_winpc *pc)
{
    return pc->id.key;
}

/* ---- the CSP state ------------------------------------------------------------------ */

static win_profile *find_profile(const csp_state *c, const char *iccid)
{
    for (size_t i = 0; i < c->n_prof; i++)
        if (strcmp(c->profiles[i].iccid, iccid) == 0)
            return &c->profiles[i];
    return NULL;
}

static win_server *find_server(const csp_state *c, const char *name)
{
    for (size_t i = 0; i < c->n_srv; i++)
        if (strcmp(c->servers[i].name, name) == 0)
            return &c->servers[i];
    return NULL;
}

static win_profile *add_profile(csp_state *c, const char *iccid)
{
    if (c->n_prof >= MAX_PROFILE_NODES)
        return NULL;
    win_profile *p = realloc(c->profiles, (c->n_prof + 1) * sizeof *p);
    if (!p)
        return NULL;
    c->profiles = p;
    p = &c->profiles[c->n_prof++];
    memset(p, 0, sizeof *p);
    snprintf(p->iccid, sizeof p->iccid, "%.*s", SIM_ICCID_MAX, iccid);
    p->state = 1;
    return p;
}

static void remove_profile(csp_state *c, const char *iccid)
{
    win_profile *p = find_profile(c, iccid);
    if (!p)
        return;
    size_t i = (size_t)(p - c->profiles);
    memmove(p, p + 1, (c->n_prof - i - 1) * sizeof *p);
    c->n_prof--;
}

static win_server *add_server(csp_state *c, const char *name)
{
    if (c->n_srv >= MAX_SERVER_NODES)
        return NULL;
    win_server *s = realloc(c->servers, (c->n_srv + 1) * sizeof *s);
    if (!s)
        return NULL;
    c->servers = s;
    s = &c->servers[c->n_srv++];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->dstate = 1;
    return s;
}

static bool csp_copy(csp_state *dst, const csp_state *src)
{
    memset(dst, 0, sizeof *dst);
    *dst = *src;
    dst->profiles = NULL;
    dst->servers = NULL;
    dst->pfn = NULL;
    if (src->n_prof && !(dst->profiles = malloc(src->n_prof * sizeof *dst->profiles)))
        goto fail;
    if (src->n_srv && !(dst->servers = malloc(src->n_srv * sizeof *dst->servers)))
        goto fail;
    if (src->pfn && !(dst->pfn = strdup(src->pfn)))
        goto fail;
    if (src->n_prof)
        memcpy(dst->profiles, src->profiles, src->n_prof * sizeof *dst->profiles);
    if (src->n_srv)
        memcpy(dst->servers, src->servers, src->n_srv * sizeof *dst->servers);
    return true;
fail:
    csp_clear(dst);
    return false;
}

/* ---- node names ------------------------------------------------------------------------ */

typedef enum {
    N_NONE = 0,
    /* interior */
    N_EUICCS,
    N_EUICC,
    N_DLS,
    N_DL,
    N_PROFILES,
    N_PROF,
    N_POLICIES,
    N_ACTIONS,
    N_DEVINFO,
    N_PUSH,
    /* leaves */
    N_IDENTIFIER,
    N_ISACTIVE,
    N_PPR1ALLOWED,
    N_PPR1ALREADYSET,
    N_DL_STATE,
    N_DL_AUTO,
    N_DL_ISDISC,
    N_P_SERVER,
    N_P_MID,
    N_P_STATE,
    N_P_ENABLED,
    N_P_PPR1,
    N_P_PPR2,
    N_P_ERROR,
    N_LOCALUI,
    N_RESET,
    N_ASTATUS,
    N_DEVID,
    N_MAN,
    N_MOD,
    N_DMV,
    N_LANG,
    N_SWV,
    N_CHANNEL,
    N_PUSH_STATUS,
    N_PFN,
} node_kind;

typedef struct {
    node_kind k;
    char name[256]; /* the DownloadServers or Profiles child named on the way */
} node_ref;

static bool interior(node_kind k)
{
    return k >= N_EUICCS && k <= N_PUSH;
}

/* Splits |uri| into segments (URI-decoded); false when malformed. */
static size_t split(const char *uri, char seg[][256], size_t max, bool *ok)
{
    size_t n = 0;
    *ok = true;
    const char *p = uri;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (n == max || len == 0 || len >= 256) {
            *ok = false;
            return n;
        }
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
            char c = p[i];
            if (c == '%' && i + 2 < len + 1 && isxdigit((unsigned char)p[i + 1]) &&
                isxdigit((unsigned char)p[i + 2])) {
                char h[3] = {p[i + 1], p[i + 2], 0};
                c = (char)strtol(h, NULL, 16);
                i += 2;
            }
            seg[n][o++] = c;
        }
        seg[n][o] = '\0';
        n++;
        p = e ? e + 1 : p + len;
        if (e && !*p) { /* a trailing slash */
            *ok = false;
            return n;
        }
    }
    return n;
}

static bool seg_is(const char *s, const char *want)
{
    return strcmp(s, want) == 0;
}

/* Resolves |uri| to a node kind; the node may or may not exist (see exists()). */
static node_ref resolve(const sim_winpc *pc, const char *uri)
{
    node_ref r = {N_NONE, ""};
    char seg[12][256];
    bool ok;
    if (!uri || strncmp(uri, "./", 2) != 0)
        return r;
    size_t n = split(uri + 2, seg, 12, &ok);
    if (!ok || n == 0)
        return r;
    size_t i = 0;
    if (seg_is(seg[0], "DevInfo")) {
        if (n == 1)
            r.k = N_DEVINFO;
        else if (n == 2)
            r.k = seg_is(seg[1], "DevId")  ? N_DEVID
                  : seg_is(seg[1], "Man")  ? N_MAN
                  : seg_is(seg[1], "Mod")  ? N_MOD
                  : seg_is(seg[1], "DmV")  ? N_DMV
                  : seg_is(seg[1], "Lang") ? N_LANG
                                           : N_NONE;
        return r;
    }
    if (seg_is(seg[0], "DevDetail")) {
        if (n == 2 && seg_is(seg[1], "SwV"))
            r.k = N_SWV;
        return r;
    }
    if (seg_is(seg[0], "User"))
        return r; /* the eUICCs CSP and DMClient push nodes are device scope */
    if (seg_is(seg[0], "Device"))
        i = 1;
    if (n < i + 3 || !seg_is(seg[i], "Vendor") || !seg_is(seg[i + 1], "MSFT"))
        return r;
    i += 2;
    if (seg_is(seg[i], "DMClient")) {
        /* DMClient/Provider/{id}/Push[/ChannelURI|/Status|/PFN] */
        if (n < i + 4 || !seg_is(seg[i + 1], "Provider") || !seg_is(seg[i + 2], pc->provider) ||
            !seg_is(seg[i + 3], "Push"))
            return r;
        i += 4;
        if (n == i)
            r.k = N_PUSH;
        else if (n == i + 1)
            r.k = seg_is(seg[i], "ChannelURI") ? N_CHANNEL
                  : seg_is(seg[i], "Status")   ? N_PUSH_STATUS
                  : seg_is(seg[i], "PFN")      ? N_PFN
                                               : N_NONE;
        return r;
    }
    if (!seg_is(seg[i], "eUICCs"))
        return r;
    i++;
    if (n == i) {
        r.k = N_EUICCS;
        return r;
    }
    if (!seg_is(seg[i], sim_euicc_eid(pc->euicc)) && !seg_is(seg[i], "Default"))
        return r;
    i++;
    if (n == i) {
        r.k = N_EUICC;
        return r;
    }
    const char *a = seg[i];
    if (n == i + 1) {
        r.k = seg_is(a, "Identifier")        ? N_IDENTIFIER
              : seg_is(a, "IsActive")        ? N_ISACTIVE
              : seg_is(a, "PPR1Allowed")     ? N_PPR1ALLOWED
              : seg_is(a, "PPR1AlreadySet")  ? N_PPR1ALREADYSET
              : seg_is(a, "DownloadServers") ? N_DLS
              : seg_is(a, "Profiles")        ? N_PROFILES
              : seg_is(a, "Policies")        ? N_POLICIES
              : seg_is(a, "Actions")         ? N_ACTIONS
                                             : N_NONE;
        return r;
    }
    if (n == i + 2 && seg_is(a, "Policies")) {
        r.k = seg_is(seg[i + 1], "LocalUIEnabled") ? N_LOCALUI : N_NONE;
        return r;
    }
    if (n == i + 2 && seg_is(a, "Actions")) {
        r.k = seg_is(seg[i + 1], "ResetToFactoryState") ? N_RESET
              : seg_is(seg[i + 1], "Status")            ? N_ASTATUS
                                                        : N_NONE;
        return r;
    }
    bool dl = seg_is(a, "DownloadServers"), pr = seg_is(a, "Profiles");
    if (!dl && !pr)
        return r;
    snprintf(r.name, sizeof r.name, "%s", seg[i + 1]);
    if (n == i + 2) {
        r.k = dl ? N_DL : N_PROF;
        return r;
    }
    if (n != i + 3)
        return r;
    const char *l = seg[i + 2];
    if (dl)
        r.k = seg_is(l, "DiscoveryState")      ? N_DL_STATE
              : seg_is(l, "AutoEnable")        ? N_DL_AUTO
              : seg_is(l, "IsDiscoveryServer") ? N_DL_ISDISC
                                               : N_NONE;
    else
        r.k = seg_is(l, "ServerName")    ? N_P_SERVER
              : seg_is(l, "MatchingID")  ? N_P_MID
              : seg_is(l, "State")       ? N_P_STATE
              : seg_is(l, "IsEnabled")   ? N_P_ENABLED
              : seg_is(l, "PPR1Set")     ? N_P_PPR1
              : seg_is(l, "PPR2Set")     ? N_P_PPR2
              : seg_is(l, "ErrorDetail") ? N_P_ERROR
                                         : N_NONE;
    return r;
}

/* Whether the node is there now (a DownloadServers or Profiles child must exist). */
static bool exists(const sim_winpc *pc, const csp_state *c, const node_ref *r)
{
    if (r->k == N_NONE)
        return false;
    if (r->k >= N_DL_STATE && r->k <= N_DL_ISDISC)
        return find_server(c, r->name) != NULL;
    if (r->k == N_DL)
        return find_server(c, r->name) != NULL;
    if (r->k == N_PROF || (r->k >= N_P_SERVER && r->k <= N_P_ERROR))
        return find_profile(c, r->name) != NULL;
    if (r->k == N_CHANNEL)
        return pc->channel_uri != NULL;
    if (r->k == N_PFN)
        return c->pfn != NULL;
    return true;
}

static const char *format_of(node_kind k)
{
    switch (k) {
    case N_ISACTIVE:
    case N_PPR1ALLOWED:
    case N_PPR1ALREADYSET:
    case N_DL_AUTO:
    case N_DL_ISDISC:
    case N_P_ENABLED:
    case N_P_PPR1:
    case N_P_PPR2:
    case N_LOCALUI:
        return "bool";
    case N_DL_STATE:
    case N_P_STATE:
    case N_P_ERROR:
    case N_ASTATUS:
    case N_PUSH_STATUS:
        return "int";
    default:
        return interior(k) ? "node" : "chr";
    }
}

static esim_err put(esim_buf *b, const char *s)
{
    return esim_buf_append_str(b, s);
}

/* The value a Get answers for an existing node: children joined by '/' for
 * an interior node. */
static esim_err value_of(const sim_winpc *pc, const csp_state *c, const node_ref *r, esim_buf *out)
{
    esim_buf_reset(out);
    const sim_profile *ep;
    win_profile *p = NULL;
    win_server *s = NULL;
    if (r->k >= N_DL_STATE && r->k <= N_DL_ISDISC)
        s = find_server(c, r->name);
    if (r->k >= N_P_SERVER && r->k <= N_P_ERROR)
        p = find_profile(c, r->name);
    esim_err rc = ESIM_OK;
    switch (r->k) {
    case N_EUICCS:
        return put(out, sim_euicc_eid(pc->euicc));
    case N_EUICC:
        return put(out, "Identifier/IsActive/PPR1Allowed/PPR1AlreadySet/DownloadServers/"
                        "Profiles/Policies/Actions");
    case N_DLS:
        for (size_t i = 0; rc == ESIM_OK && i < c->n_srv; i++)
            rc = esim_buf_printf(out, "%s%s", i ? "/" : "", c->servers[i].name);
        return rc == ESIM_OK ? put(out, "") : rc;
    case N_DL:
        return put(out, "DiscoveryState/AutoEnable/IsDiscoveryServer");
    case N_PROFILES:
        for (size_t i = 0; rc == ESIM_OK && i < c->n_prof; i++)
            rc = esim_buf_printf(out, "%s%s", i ? "/" : "", c->profiles[i].iccid);
        return rc == ESIM_OK ? put(out, "") : rc;
    case N_PROF:
        return put(out, "ServerName/MatchingID/State/IsEnabled/PPR1Set/PPR2Set/ErrorDetail");
    case N_POLICIES:
        return put(out, "LocalUIEnabled");
    case N_ACTIONS:
        return put(out, "ResetToFactoryState/Status");
    case N_DEVINFO:
        return put(out, "DevId/Man/Mod/DmV/Lang");
    case N_PUSH:
        return put(out, "PFN/ChannelURI/Status");
    case N_IDENTIFIER:
        return put(out, sim_euicc_eid(pc->euicc));
    case N_ISACTIVE:
        return put(out, "true");
    case N_PPR1ALLOWED:
        return put(out, sim_euicc_profile_count(pc->euicc) == 0 ? "true" : "false");
    case N_PPR1ALREADYSET: {
        bool any = false;
        for (size_t i = 0; i < sim_euicc_profile_count(pc->euicc); i++)
            any |= (sim_euicc_profile_at(pc->euicc, i)->ppr & SIM_PPR1) != 0;
        return put(out, any ? "true" : "false");
    }
    case N_DL_STATE:
        return esim_buf_printf(out, "%u", (unsigned)s->dstate);
    case N_DL_AUTO:
        return put(out, (s->flags & SF_AUTO) ? "true" : "false");
    case N_DL_ISDISC:
        return put(out, (s->flags & SF_DISC) ? "true" : "false");
    case N_P_SERVER:
        return put(out, p->server);
    case N_P_MID:
        return put(out, p->mid);
    case N_P_STATE:
        return esim_buf_printf(out, "%u", (unsigned)p->state);
    case N_P_ERROR:
        return esim_buf_printf(out, "%u", (unsigned)p->error);
    case N_P_ENABLED:
        ep = sim_euicc_find(pc->euicc, p->iccid);
        if (ep)
            return put(out, ep->state == SIM_PROFILE_ENABLED ? "true" : "false");
        return put(out, (p->flags & PF_ENABLED) ? "true" : "false");
    case N_P_PPR1:
    case N_P_PPR2:
        ep = sim_euicc_find(pc->euicc, p->iccid);
        return put(out,
                   ep && (ep->ppr & (r->k == N_P_PPR1 ? SIM_PPR1 : SIM_PPR2)) ? "true" : "false");
    case N_LOCALUI:
        return put(out, c->local_ui ? "true" : "false");
    case N_RESET:
        return put(out, "");
    case N_ASTATUS:
        return esim_buf_printf(out, "%d", c->action_status);
    case N_DEVID:
        return put(out, pc->device_id);
    case N_MAN:
        return put(out, pc->man);
    case N_MOD:
        return put(out, pc->model);
    case N_DMV:
        return put(out, "1.3");
    case N_LANG:
        return put(out, "en-US");
    case N_SWV:
        return put(out, pc->os);
    case N_CHANNEL:
        return put(out, pc->channel_uri ? pc->channel_uri : "");
    case N_PUSH_STATUS:
        return put(out, pc->channel_uri ? "0" : "1");
    case N_PFN:
        return put(out, c->pfn ? c->pfn : "");
    case N_NONE:
        break;
    }
    return ESIM_ENOTFOUND;
}

esim_err sim_winpc_get(const sim_winpc *pc, const char *uri, esim_buf *out)
{
    node_ref r = resolve(pc, uri);
    if (!exists(pc, &pc->csp, &r))
        return ESIM_ENOTFOUND;
    return value_of(pc, &pc->csp, &r, out);
}

/* ---- executing commands ------------------------------------------------------------------ */

typedef enum { OP_ADD, OP_REPLACE, OP_DELETE, OP_EXEC, OP_GET } op_kind;

/* eUICC changes a command asks for, applied once it (or its Atomic) succeeded. */
typedef enum { FX_ENABLE, FX_DISABLE, FX_DELETE } fx_kind;
typedef struct {
    fx_kind k;
    char iccid[SIM_ICCID_MAX + 1];
} effect;

typedef struct {
    sim_winpc *pc;
    csp_state *c;
    effect fx[32];
    size_t n_fx;
} exec_ctx;

static bool parse_bool(const char *v, bool *out)
{
    if (!v)
        return false;
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
        *out = true;
    else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
        *out = false;
    else
        return false;
    return true;
}

static int add_fx(exec_ctx *x, fx_kind k, const char *iccid)
{
    if (x->n_fx == sizeof x->fx / sizeof x->fx[0])
        return 500;
    x->fx[x->n_fx].k = k;
    snprintf(x->fx[x->n_fx].iccid, sizeof x->fx[0].iccid, "%.*s", SIM_ICCID_MAX, iccid);
    x->n_fx++;
    return 200;
}

/* Whether the eUICC would allow switching |iccid| on or off (after the
 * effects already queued, which this check does not model beyond the rules
 * of the profile itself). */
static int check_switch(const sim_winpc *pc, const char *iccid, bool on)
{
    const sim_profile *p = sim_euicc_find(pc->euicc, iccid);
    if (!p)
        return 200; /* not installed yet: IsEnabled applies after the download */
    if (on) {
        const sim_profile *cur = sim_euicc_enabled(pc->euicc);
        if (cur && cur != p && (cur->ppr & SIM_PPR1))
            return 405;
        return 200;
    }
    if (p->state == SIM_PROFILE_ENABLED && (p->ppr & SIM_PPR1))
        return 405;
    return 200;
}

/* One Item of Add/Replace/Delete/Exec against the CSP. */
static int exec_write(exec_ctx *x, op_kind op, const char *uri, const char *data)
{
    sim_winpc *pc = x->pc;
    csp_state *c = x->c;
    node_ref r = resolve(pc, uri);
    if (r.k == N_NONE)
        return 404;
    bool have = exists(pc, c, &r);
    win_profile *p = NULL;
    win_server *s = NULL;
    bool b;
    switch (r.k) {
    case N_DL:
        if (op == OP_ADD) {
            if (have)
                return 418;
            if (strlen(r.name) > 253 || strchr(r.name, '@'))
                return 400;
            return add_server(c, r.name) ? 200 : 500;
        }
        if (op == OP_DELETE) {
            if (!have)
                return 404;
            s = find_server(c, r.name);
            size_t i = (size_t)(s - c->servers);
            memmove(s, s + 1, (c->n_srv - i - 1) * sizeof *s);
            c->n_srv--;
            return 200;
        }
        return op == OP_REPLACE ? (have ? 200 : 404) : 405;
    case N_DL_AUTO:
    case N_DL_ISDISC: {
        if (op != OP_ADD && op != OP_REPLACE)
            return 405;
        if (!have)
            return 404;
        s = find_server(c, r.name);
        unsigned set = r.k == N_DL_AUTO ? SF_AUTO_SET : SF_DISC_SET;
        unsigned val = r.k == N_DL_AUTO ? SF_AUTO : SF_DISC;
        if (op == OP_ADD && (s->flags & set))
            return 418;
        if (!parse_bool(data, &b))
            return 400;
        s->flags = (uint8_t)((s->flags & ~val) | set | (b ? val : 0));
        return 200;
    }
    case N_PROF:
        if (op == OP_ADD) {
            if (have)
                return 418;
            if (esim_iccid_validate(r.name, NULL) != ESIM_OK)
                return 400;
            return add_profile(c, r.name) ? 200 : 500;
        }
        if (op == OP_DELETE) {
            if (!have)
                return 404;
            const sim_profile *ep = sim_euicc_find(pc->euicc, r.name);
            if (ep) {
                if (ep->ppr & SIM_PPR2)
                    return 405;
                if (ep->state == SIM_PROFILE_ENABLED && (ep->ppr & SIM_PPR1))
                    return 405;
                if (add_fx(x, FX_DELETE, r.name) != 200)
                    return 500;
            }
            remove_profile(c, r.name);
            return 200;
        }
        return op == OP_REPLACE ? (have ? 200 : 404) : 405;
    case N_P_SERVER:
    case N_P_MID:
        if (op != OP_ADD && op != OP_REPLACE)
            return 405;
        if (!have)
            return 404;
        p = find_profile(c, r.name);
        {
            unsigned set = r.k == N_P_SERVER ? PF_SERVER : PF_MID;
            if (op == OP_ADD && (p->flags & set))
                return 418;
            /* "Must be set at creation": not once the download began. */
            if (p->flags & PF_STARTED)
                return 405;
            if (!data || !*data)
                return 400;
            if (r.k == N_P_MID) {
                if (esim_windows_matching_id_validate(data, NULL) != ESIM_OK)
                    return 400;
                snprintf(p->mid, sizeof p->mid, "%s", data);
            } else {
                if (strlen(data) >= sizeof p->server || strchr(data, '/') || strchr(data, '@'))
                    return 400;
                snprintf(p->server, sizeof p->server, "%s", data);
            }
            p->flags |= set;
        }
        return 200;
    case N_P_ENABLED:
        if (op != OP_ADD && op != OP_REPLACE)
            return 405;
        if (!have)
            return 404;
        p = find_profile(c, r.name);
        if (op == OP_ADD && (p->flags & PF_ENABLED_SET))
            return 418;
        if (!parse_bool(data, &b))
            return 400;
        {
            int st = check_switch(pc, p->iccid, b);
            if (st != 200)
                return st;
            if (sim_euicc_find(pc->euicc, p->iccid) &&
                add_fx(x, b ? FX_ENABLE : FX_DISABLE, p->iccid) != 200)
                return 500;
        }
        p->flags = (uint8_t)((p->flags & ~PF_ENABLED) | PF_ENABLED_SET | (b ? PF_ENABLED : 0));
        return 200;
    case N_LOCALUI:
        if (op != OP_REPLACE)
            return 405;
        if (!parse_bool(data, &b))
            return 400;
        c->local_ui = b;
        return 200;
    case N_RESET:
        if (op != OP_EXEC)
            return 405;
        c->reset_pending = true;
        c->action_status = 1; /* S_FALSE: in progress */
        return 200;
    case N_PFN:
        if (op == OP_DELETE || op == OP_EXEC)
            return 405;
        if (op == OP_ADD && have)
            return 418;
        if (op == OP_REPLACE && !have)
            return 404;
        if (!data || strlen(data) > 512)
            return 400;
        {
            char *v = strdup(data);
            if (!v)
                return 500;
            free(c->pfn);
            c->pfn = v;
        }
        return 200;
    default:
        /* read-only leaves and the fixed interior nodes */
        return have ? 405 : 404;
    }
}

static void apply_fx(exec_ctx *x)
{
    for (size_t i = 0; i < x->n_fx; i++) {
        effect *f = &x->fx[i];
        sim_euicc *e = x->pc->euicc;
        if (f->k == FX_ENABLE)
            sim_euicc_enable(e, f->iccid);
        else if (f->k == FX_DISABLE)
            sim_euicc_disable(e, f->iccid);
        else {
            const sim_profile *p = sim_euicc_find(e, f->iccid);
            if (p && p->state == SIM_PROFILE_ENABLED)
                sim_euicc_disable(e, f->iccid);
            sim_euicc_delete(e, f->iccid);
        }
    }
    x->n_fx = 0;
}

/* ---- SyncML reading ---------------------------------------------------------------------- */

/*
 * A message is read into a small tree of elements and text (core/xml_plain.h:
 * names local, as libxml2 gives them; text decoded). Two readers build it
 * with the same result: the strict reader for plain XML (esim_xml_plain_read:
 * ASCII, the XML declaration, elements with at most an xmlns attribute, text
 * with the five predefined entities) and libxml2 for everything else, its
 * tree converted: the strict reader hands a message over the moment it meets
 * anything outside that subset (comments, PIs, a DOCTYPE, CDATA, character
 * references, prefixes, other attributes, non-ASCII or CR bytes, depth over
 * 64) or anything malformed, so what is accepted and refused is libxml2's
 * word either way (test_sim_winpc test_two_readers compares them).
 */
typedef struct {
    esim_xml_tree x;
    xmlDoc *doc;     /* libxml2's tree behind a handed-over message */
    xmlChar **owned; /* entity contents read from it */
    size_t n_owned;
} sx_tree;

static bool sx_force_libxml2; /* tests: every message through libxml2 */
static size_t sx_scanned;     /* messages the strict reader read */

size_t sim_winpc_xml_reader_for_tests(bool libxml2_only)
{
    sx_force_libxml2 = libxml2_only;
    return sx_scanned;
}

static void sx_free(sx_tree *t)
{
    for (size_t i = 0; i < t->n_owned; i++)
        xmlFree(t->owned[i]);
    free(t->owned);
    esim_xml_free(&t->x);
    xmlFreeDoc(t->doc);
    memset(t, 0, sizeof *t);
}

/* libxml2's tree as the strict reader's: elements, text, CDATA, entity references as text. */
static size_t sx_count(const xmlNode *n)
{
    size_t k = 0;
    for (; n; n = n->next)
        k += 1 + (n->type == XML_ELEMENT_NODE ? sx_count(n->children) : 0);
    return k;
}

static bool sx_convert(sx_tree *t, esim_xml_node *parent, const xmlNode *n)
{
    for (; n; n = n->next) {
        esim_xml_node *x = NULL;
        if (n->type == XML_ELEMENT_NODE) {
            x = esim_xml_add(&t->x, parent, ESIM_XML_EL);
            if (!x)
                return false;
            x->name = (const char *)n->name;
            if (!parent)
                t->x.root = x;
            if (!sx_convert(t, x, n->children))
                return false;
            if (!parent)
                return true; /* the root element only */
        } else if (parent && (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE)) {
            x = esim_xml_add(&t->x, parent,
                             n->type == XML_TEXT_NODE ? ESIM_XML_TEXT : ESIM_XML_CDATA);
            if (!x)
                return false;
            x->text = n->content ? (const char *)n->content : "";
        } else if (parent && n->type == XML_ENTITY_REF_NODE) {
            xmlChar *v = xmlNodeGetContent(n);
            xmlChar **o = v ? realloc(t->owned, (t->n_owned + 1) * sizeof *o) : NULL;
            if (!o) {
                xmlFree(v);
                return false;
            }
            t->owned = o;
            t->owned[t->n_owned++] = v;
            x = esim_xml_add(&t->x, parent, ESIM_XML_TEXT);
            if (!x)
                return false;
            x->text = (const char *)v;
        }
    }
    return true;
}

/* Reads |msg| into |t|: false when it is not well-formed XML (or memory ran out). */
static bool sx_read(sx_tree *t, const void *msg, size_t len)
{
    memset(t, 0, sizeof *t);
    if (!sx_force_libxml2 && esim_xml_plain_read(&t->x, msg, len)) {
        sx_scanned++;
        return true;
    }
    sx_free(t);
    t->doc = xmlReadMemory(msg, (int)len, "server.xml", NULL,
                           XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!t->doc)
        return false;
    const xmlNode *top = t->doc->children;
    t->x.cap = sx_count(top);
    t->x.nodes = malloc((t->x.cap ? t->x.cap : 1) * sizeof *t->x.nodes);
    return t->x.nodes && sx_convert(t, NULL, top);
}

static char *child_text(const esim_xml_node *n, const char *name)
{
    return esim_xml_content(esim_xml_child(n, name));
}

/* LocURI of the Item's Target (or Source). */
static char *item_uri(const esim_xml_node *item, const char *which)
{
    return child_text(esim_xml_child(item, which), "LocURI");
}

typedef struct {
    char *uri;
    char *data; /* NULL when no Data */
    int bad;    /* a status to answer instead of executing (0: fine) */
} item_in;

static void item_read(const esim_xml_node *item, item_in *out)
{
    memset(out, 0, sizeof *out);
    out->uri = item_uri(item, "Target");
    esim_xml_node *data = esim_xml_child(item, "Data");
    if (data) {
        /* Data must be the last element of an Item; CDATA is not read. */
        for (esim_xml_node *n = data->next; n; n = n->next)
            if (n->kind == ESIM_XML_EL)
                out->bad = 400;
        for (esim_xml_node *n = data->children; n; n = n->next)
            if (n->kind == ESIM_XML_CDATA || n->kind == ESIM_XML_EL)
                out->bad = 400;
        out->data = esim_xml_content(data);
    }
    if (!out->uri)
        out->bad = out->bad ? out->bad : 400;
    else if (out->uri[0] == '/')
        out->bad = 400;
    else if (strncmp(out->uri, "./", 2) != 0) {
        /* a LocURI with no prefix targets the device */
        size_t n = strlen(out->uri);
        char *u = malloc(n + 3);
        if (u) {
            memcpy(u, "./", 2);
            memcpy(u + 2, out->uri, n + 1);
        }
        free(out->uri);
        out->uri = u;
        if (!u)
            out->bad = 500;
    }
}

static void item_free(item_in *it)
{
    free(it->uri);
    free(it->data);
}

/* ---- SyncML writing ------------------------------------------------------------------------ */

/* Appends |s| escaped for element text, a run of plain characters at a time. */
static esim_err esc(esim_buf *b, const char *s)
{
    esim_err rc = ESIM_OK;
    while (rc == ESIM_OK && s && *s) {
        size_t n = strcspn(s, "<>&\"");
        if (n)
            rc = esim_buf_append(b, s, n);
        s += n;
        if (rc != ESIM_OK || !*s)
            break;
        rc = put(b, *s == '<' ? "&lt;" : *s == '>' ? "&gt;" : *s == '&' ? "&amp;" : "&quot;");
        s++;
    }
    return rc;
}

static esim_err put_uint(esim_buf *b, unsigned long v)
{
    char t[21];
    esim_format_u64(t, v);
    return esim_buf_append_str(b, t);
}

static void el(esim_buf *b, const char *tag, const char *text)
{
    put(b, "<");
    put(b, tag);
    put(b, ">");
    esc(b, text);
    put(b, "</");
    put(b, tag);
    put(b, ">");
}

typedef struct {
    esim_buf *b;
    unsigned cmd_id;
    const char *msg_ref;
} writer;

/* "<Verb><CmdID>N</CmdID>", N the message's next command id. */
static void open_cmd(esim_buf *b, const char *verb, unsigned *cmd_id)
{
    put(b, "<");
    put(b, verb);
    put(b, "><CmdID>");
    put_uint(b, ++*cmd_id);
    put(b, "</CmdID>");
}

static void hdr(sim_winpc *pc, esim_buf *b)
{
    esim_buf_reset(b);
    put(b, "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD>"
           "<VerProto>DM/1.2</VerProto>");
    put(b, "<SessionID>");
    put_uint(b, pc->session_id);
    put(b, "</SessionID><MsgID>");
    put_uint(b, pc->msg_id);
    put(b, "</MsgID>");
    put(b, "<Target><LocURI>");
    esc(b, pc->target);
    put(b, "</LocURI></Target><Source><LocURI>");
    esc(b, pc->device_id);
    put(b, "</LocURI></Source></SyncHdr><SyncBody>");
}

static void status(writer *w, const char *cmd_ref, const char *cmd, const char *target_ref,
                   int code)
{
    open_cmd(w->b, "Status", &w->cmd_id);
    el(w->b, "MsgRef", w->msg_ref);
    el(w->b, "CmdRef", cmd_ref ? cmd_ref : "");
    el(w->b, "Cmd", cmd);
    if (target_ref)
        el(w->b, "TargetRef", target_ref);
    put(w->b, "<Data>");
    put_uint(w->b, (unsigned long)code); /* a SyncML status: positive */
    put(w->b, "</Data></Status>");
}

/* ---- the session -------------------------------------------------------------------------- */

void sim_winpc_session_abort(sim_winpc *pc)
{
    pc->in_session = false;
    pc->dirty = true;
}

bool sim_winpc_in_session(const sim_winpc *pc)
{
    return pc->in_session;
}

const char *sim_winpc_session_url(const sim_winpc *pc)
{
    return pc->url ? pc->url : pc->target;
}

esim_err sim_winpc_session_start(sim_winpc *pc, const char *server_url, bool pushed, esim_buf *out,
                                 esim_error *err)
{
    if (!server_url || !*server_url || strlen(server_url) > 2048)
        return esim_fail(err, ESIM_EINVAL, "a session needs the server's URL");
    if (pc->in_session)
        return esim_fail(err, ESIM_ESTATE, "%s is already in a session", pc->device_id);
    char *t = strdup(server_url);
    if (!t)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    free(pc->target);
    free(pc->url);
    pc->target = t;
    pc->url = NULL;
    /* SessionID: at most 4 bytes, decimal as Windows sends it; 0 is skipped. */
    pc->session_id = pc->session_id >= 9999 ? 1 : pc->session_id + 1;
    pc->msg_id = 1;
    pc->in_session = true;
    pc->dirty = true;
    hdr(pc, out);
    esim_buf_printf(out, "<Alert><CmdID>1</CmdID><Data>%d</Data></Alert>", pushed ? 1200 : 1201);
    put(out, "<Replace><CmdID>2</CmdID>");
    static const char *const nodes[] = {"DevId", "Man", "Mod", "DmV", "Lang"};
    static const node_kind kinds[] = {N_DEVID, N_MAN, N_MOD, N_DMV, N_LANG};
    esim_buf v = {0};
    for (size_t i = 0; i < 5; i++) {
        node_ref r = {kinds[i], ""};
        value_of(pc, &pc->csp, &r, &v);
        put(out, "<Item><Source><LocURI>./DevInfo/");
        put(out, nodes[i]);
        put(out, "</LocURI></Source><Data>");
        esc(out, (const char *)v.data);
        put(out, "</Data></Item>");
    }
    esim_buf_free(&v);
    esim_err rc = put(out, "</Replace><Final/></SyncBody></SyncML>");
    if (rc != ESIM_OK) {
        pc->in_session = false;
        return esim_fail(err, rc, "out of memory");
    }
    return ESIM_OK;
}

static bool is_command(const esim_xml_node *n)
{
    static const char *const cmds[] = {"Add",   "Replace", "Delete",   "Exec", "Get",
                                       "Alert", "Atomic",  "Sequence", "Copy", "Sync",
                                       "Map",   "Put",     "Search"};
    if (!n || n->kind != ESIM_XML_EL)
        return false;
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (esim_xml_is(n, cmds[i]))
            return true;
    return false;
}

static op_kind op_of(const esim_xml_node *n)
{
    return esim_xml_is(n, "Add")       ? OP_ADD
           : esim_xml_is(n, "Replace") ? OP_REPLACE
           : esim_xml_is(n, "Delete")  ? OP_DELETE
           : esim_xml_is(n, "Exec")    ? OP_EXEC
                                       : OP_GET;
}

/* A Get: a Status per Item, then one Results with the Items found. */
static void run_get(exec_ctx *x, writer *w, const esim_xml_node *cmd, const char *cmd_id)
{
    size_t n_items = 0;
    for (esim_xml_node *it = cmd->children; it; it = it->next)
        n_items += esim_xml_is(it, "Item");
    esim_buf results = {0}, v = {0};
    size_t found = 0;
    if (n_items == 0)
        status(w, cmd_id, "Get", NULL, 400);
    for (esim_xml_node *it = cmd->children; it; it = it->next) {
        if (!esim_xml_is(it, "Item"))
            continue;
        item_in in;
        item_read(it, &in);
        int code = in.bad;
        node_ref r = {N_NONE, ""};
        if (!code) {
            r = resolve(x->pc, in.uri);
            code = exists(x->pc, x->c, &r) ? 200 : 404;
        }
        if (code == 200 && value_of(x->pc, x->c, &r, &v) != ESIM_OK)
            code = 500;
        status(w, cmd_id, "Get", n_items > 1 ? in.uri : NULL, code);
        if (code == 200) {
            found++;
            put(&results, "<Item><Source><LocURI>");
            esc(&results, in.uri);
            put(&results, "</LocURI></Source><Meta><Format xmlns=\"syncml:metinf\">");
            put(&results, format_of(r.k));
            put(&results, "</Format><Type xmlns=\"syncml:metinf\">text/plain</Type></Meta><Data>");
            esc(&results, v.data ? (const char *)v.data : "");
            put(&results, "</Data></Item>");
        }
        item_free(&in);
    }
    if (found) {
        open_cmd(w->b, "Results", &w->cmd_id);
        el(w->b, "MsgRef", w->msg_ref);
        el(w->b, "CmdRef", cmd_id);
        put(w->b, "<Cmd>Get</Cmd>");
        esim_buf_append(w->b, results.data, results.len);
        put(w->b, "</Results>");
    }
    esim_buf_free(&results);
    esim_buf_free(&v);
}

/* Add/Replace/Delete/Exec: the worst Item decides when there is one Status;
 * several Items get one Status each (TargetRef). Returns the worst code. */
static int run_write(exec_ctx *x, writer *w, const esim_xml_node *cmd, const char *cmd_id,
                     bool quiet, int *codes, size_t *n_codes)
{
    const char *name = cmd->name;
    op_kind op = op_of(cmd);
    size_t n_items = 0;
    for (esim_xml_node *it = cmd->children; it; it = it->next)
        n_items += esim_xml_is(it, "Item");
    int worst = n_items ? 200 : 400;
    if (!n_items && !quiet)
        status(w, cmd_id, name, NULL, 400);
    for (esim_xml_node *it = cmd->children; it; it = it->next) {
        if (!esim_xml_is(it, "Item"))
            continue;
        item_in in;
        item_read(it, &in);
        int code = in.bad ? in.bad : exec_write(x, op, in.uri, in.data);
        if (code != 200 && worst == 200)
            worst = code;
        if (!quiet && n_items > 1)
            status(w, cmd_id, name, in.uri, code);
        if (codes && *n_codes < 64)
            codes[(*n_codes)++] = code;
        item_free(&in);
    }
    if (!quiet && n_items == 1)
        status(w, cmd_id, name, NULL, worst);
    return worst;
}

static void run_command(exec_ctx *x, writer *w, const esim_xml_node *cmd, bool *abort_session);

/* Atomic: no Get, no nested Atomic; all or nothing (rolled back: 216). */
static void run_atomic(exec_ctx *x, writer *w, const esim_xml_node *cmd, const char *cmd_id)
{
    const esim_xml_node *kids[64];
    size_t n = 0;
    int forbidden = -1;
    for (esim_xml_node *k = cmd->children; k; k = k->next) {
        if (!is_command(k))
            continue;
        if (n == 64) {
            forbidden = 63;
            break;
        }
        if (forbidden < 0 && (esim_xml_is(k, "Get") || esim_xml_is(k, "Atomic") ||
                              esim_xml_is(k, "Sequence") || esim_xml_is(k, "Alert")))
            forbidden = (int)n;
        kids[n++] = k;
    }
    char *ids[64] = {0};
    for (size_t i = 0; i < n; i++)
        ids[i] = child_text(kids[i], "CmdID");
    if (forbidden >= 0) {
        status(w, cmd_id, "Atomic", NULL, 507);
        for (size_t i = 0; i < n; i++)
            status(w, ids[i], kids[i]->name, NULL, (int)i == forbidden ? 500 : 215);
        goto out;
    }
    csp_state snap;
    if (!csp_copy(&snap, x->c)) {
        status(w, cmd_id, "Atomic", NULL, 500);
        goto out;
    }
    size_t fx_mark = x->n_fx;
    int codes[64];
    size_t failed = SIZE_MAX;
    for (size_t i = 0; i < n; i++) {
        size_t nc = 0;
        int c = run_write(x, w, kids[i], ids[i], true, NULL, &nc);
        codes[i] = c;
        if (c != 200) {
            failed = i;
            break;
        }
    }
    if (failed == SIZE_MAX) {
        status(w, cmd_id, "Atomic", NULL, 200);
        for (size_t i = 0; i < n; i++)
            status(w, ids[i], kids[i]->name, NULL, 200);
        csp_clear(&snap);
    } else {
        csp_clear(x->c);
        *x->c = snap;
        x->n_fx = fx_mark;
        status(w, cmd_id, "Atomic", NULL, 507);
        for (size_t i = 0; i < n; i++)
            status(w, ids[i], kids[i]->name, NULL, i < failed ? 216 : i == failed ? codes[i] : 215);
    }
out:
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
}

static void run_command(exec_ctx *x, writer *w, const esim_xml_node *cmd, bool *abort_session)
{
    char *id = child_text(cmd, "CmdID");
    const char *name = cmd->name;
    if (esim_xml_is(cmd, "Get")) {
        run_get(x, w, cmd, id);
    } else if (esim_xml_is(cmd, "Add") || esim_xml_is(cmd, "Replace") ||
               esim_xml_is(cmd, "Delete") || esim_xml_is(cmd, "Exec")) {
        run_write(x, w, cmd, id, false, NULL, NULL);
        apply_fx(x);
    } else if (esim_xml_is(cmd, "Atomic")) {
        run_atomic(x, w, cmd, id);
        apply_fx(x);
    } else if (esim_xml_is(cmd, "Sequence")) {
        status(w, id, "Sequence", NULL, 200);
        for (esim_xml_node *k = cmd->children; k; k = k->next)
            if (is_command(k))
                run_command(x, w, k, abort_session);
    } else if (esim_xml_is(cmd, "Alert")) {
        char *data = child_text(cmd, "Data");
        int code = data ? atoi(data) : 0;
        if (code == 1223)
            *abort_session = true;
        status(w, id, "Alert", NULL, code >= 1100 && code <= 1226 ? 200 : 406);
        free(data);
    } else {
        status(w, id, name, NULL, 406); /* Copy, Sync, Map...: not supported by this client */
    }
    free(id);
}

esim_err sim_winpc_session_reply(sim_winpc *pc, const void *msg, size_t len, esim_buf *out,
                                 bool *done, esim_error *err)
{
    *done = false;
    esim_buf_reset(out);
    if (!pc->in_session)
        return esim_fail(err, ESIM_ESTATE, "%s has no open session", pc->device_id);
    esim_err rc = ESIM_OK;
    sx_tree doc = {0};
    char *sid = NULL, *msgid = NULL, *resp = NULL;
    if (!msg || len == 0 || len > MAX_MSG) {
        rc = esim_fail(err, ESIM_EPROTO, "the server's message is empty or over 1 MiB");
        goto end_session;
    }
    esim_xml_node *root = sx_read(&doc, msg, len) ? doc.x.root : NULL;
    if (!esim_xml_is(root, "SyncML")) {
        rc = esim_fail(err, ESIM_EPROTO, "the server's message is not SyncML XML");
        goto end_session;
    }
    esim_xml_node *sh = esim_xml_child(root, "SyncHdr"), *body = esim_xml_child(root, "SyncBody");
    sid = child_text(sh, "SessionID");
    msgid = child_text(sh, "MsgID");
    char ours[16];
    snprintf(ours, sizeof ours, "%u", pc->session_id);
    if (!sh || !body || !sid || !msgid || !*msgid) {
        rc = esim_fail(err, ESIM_EPROTO, "the server's SyncML lacks SyncHdr, SyncBody or MsgID");
        goto end_session;
    }
    if (strcmp(sid, ours) != 0) {
        rc =
            esim_fail(err, ESIM_EPROTO, "the server answered SessionID '%.16s', not %s", sid, ours);
        goto end_session;
    }
    /* The first element must be the Status of our SyncHdr (CmdRef 0). */
    esim_xml_node *first = body->children;
    while (first && first->kind != ESIM_XML_EL)
        first = first->next;
    char *ref = esim_xml_is(first, "Status") ? child_text(first, "CmdRef") : NULL;
    char *code = esim_xml_is(first, "Status") ? child_text(first, "Data") : NULL;
    bool hdr_ok = ref && strcmp(ref, "0") == 0;
    int hdr_code = code ? atoi(code) : 0;
    free(ref);
    free(code);
    if (!hdr_ok) {
        rc = esim_fail(err, ESIM_EPROTO,
                       "the server's first element is not the Status of the SyncHdr (CmdRef 0)");
        goto end_session;
    }
    if (hdr_code == 401 || hdr_code == 403 || hdr_code == 407) {
        rc = esim_fail(err, ESIM_EAUTH, "the server refused the session: SyncHdr Status %d",
                       hdr_code);
        goto end_session;
    }
    if (hdr_code != 200 && hdr_code != 212) {
        rc = esim_fail(err, ESIM_EPROTO, "the server's SyncHdr Status is %d", hdr_code);
        goto end_session;
    }
    resp = child_text(sh, "RespURI");
    if (resp && *resp) {
        free(pc->url);
        pc->url = resp;
        resp = NULL;
    }
    bool any_cmd = false, final = esim_xml_child(body, "Final") != NULL;
    for (esim_xml_node *n = body->children; n; n = n->next)
        any_cmd |= is_command(n);
    if (!any_cmd && final) {
        /* A message of Status only: the session is over. */
        pc->in_session = false;
        pc->sessions++;
        pc->dirty = true;
        *done = true;
        goto out;
    }
    pc->msg_id++;
    writer w = {out, 0, msgid};
    hdr(pc, out);
    /* Status of the server's SyncHdr. */
    open_cmd(out, "Status", &w.cmd_id);
    el(out, "MsgRef", msgid);
    put(out, "<CmdRef>0</CmdRef><Cmd>SyncHdr</Cmd><TargetRef>");
    esc(out, pc->device_id);
    put(out, "</TargetRef><SourceRef>");
    esc(out, pc->target);
    put(out, "</SourceRef><Data>200</Data></Status>");
    exec_ctx x = {.pc = pc, .c = &pc->csp};
    bool abort_session = false;
    for (esim_xml_node *n = body->children; n && !abort_session; n = n->next)
        if (is_command(n))
            run_command(&x, &w, n, &abort_session);
    pc->dirty = true;
    if (abort_session) {
        esim_buf_reset(out);
        pc->in_session = false;
        *done = true;
        goto out;
    }
    if (!final) {
        open_cmd(out, "Alert", &w.cmd_id);
        put(out, "<Data>1222</Data></Alert>");
    } else
        put(out, "<Final/>");
    if (put(out, "</SyncBody></SyncML>") != ESIM_OK) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        goto end_session;
    }
    goto out;
end_session:
    esim_buf_reset(out);
    pc->in_session = false;
    *done = true;
out:
    free(sid);
    free(msgid);
    free(resp);
    sx_free(&doc);
    return rc;
}

/* ---- background jobs ------------------------------------------------------------------------ */

bool sim_winpc_next_job(sim_winpc *pc, sim_winpc_job *out)
{
    csp_state *c = &pc->csp;
    memset(out, 0, sizeof *out);
    if (c->reset_pending) {
        c->reset_pending = false;
        sim_euicc_memory_reset(pc->euicc);
        c->n_prof = 0; /* every profile node goes with its profile */
        pc->dirty = true;
        out->kind = SIM_WINJOB_RESET;
        return true;
    }
    for (size_t i = 0; i < c->n_prof; i++) {
        win_profile *p = &c->profiles[i];
        if (p->state != 1 || (p->flags & (PF_STARTED | PF_DISCOVERED)))
            continue;
        p->flags |= PF_STARTED;
        pc->dirty = true;
        out->kind = SIM_WINJOB_DOWNLOAD;
        snprintf(out->node, sizeof out->node, "%s", p->iccid);
        if (p->flags & PF_SERVER)
            snprintf(out->server_url, sizeof out->server_url, "https://%s", p->server);
        snprintf(out->matching_id, sizeof out->matching_id, "%s", p->mid);
        return true;
    }
    for (size_t i = 0; i < c->n_srv; i++) {
        win_server *s = &c->servers[i];
        if (s->dstate != 1 || (s->flags & SF_STARTED))
            continue;
        s->flags |= SF_STARTED;
        s->dstate = 2;
        pc->dirty = true;
        out->kind = SIM_WINJOB_DISCOVERY;
        snprintf(out->node, sizeof out->node, "%s", s->name);
        snprintf(out->server_url, sizeof out->server_url, "https://%s", s->name);
        return true;
    }
    return false;
}

int sim_winpc_error_detail(const sim_download_result *r)
{
    if (!r || r->err == ESIM_OK)
        return 0;
    const char *s = r->subject_code, *rc = r->reason_code;
    switch (r->err) {
    case ESIM_EUNAVAIL:
    case ESIM_EINVAL:
    case ESIM_ETIMEOUT:
        return 14;
    case ESIM_EAUTH:
        if (strcmp(s, "8.2.6") == 0 && strcmp(rc, "3.8") == 0)
            return 6;
        if (strcmp(s, "8.2") == 0 && strcmp(rc, "1.2") == 0)
            return 12;
        if (strcmp(s, "8.2") == 0 && strcmp(rc, "3.7") == 0)
            return 11;
        if (strcmp(s, "8.1.1") == 0 && strcmp(rc, "3.8") == 0)
            return 10;
        if (strcmp(s, "8.1.1") == 0 && strcmp(rc, "2.2") == 0)
            return 7;
        return 13;
    case ESIM_ESTATE:
        return strstr(r->message, "insufficientMemory") ? 8 : 1;
    default:
        return 13;
    }
}

void sim_winpc_job_done(sim_winpc *pc, const sim_winpc_job *job, const sim_download_result *r)
{
    csp_state *c = &pc->csp;
    pc->dirty = true;
    if (job->kind == SIM_WINJOB_RESET) {
        c->action_status = 0; /* S_OK */
        return;
    }
    bool ok = r && r->err == ESIM_OK;
    if (job->kind == SIM_WINJOB_DOWNLOAD) {
        win_profile *p = find_profile(c, job->node);
        if (!p) /* deleted while it downloaded: the profile stays on the card */
            return;
        if (!job->server_url[0]) {
            p->state = 4;
            p->error = 13;
            return;
        }
        p->state = ok ? 2 : 4;
        p->error = (uint8_t)sim_winpc_error_detail(r);
        if (ok && (p->flags & PF_ENABLED))
            sim_euicc_enable(pc->euicc, r->iccid);
        return;
    }
    win_server *s = find_server(c, job->node);
    if (!s)
        return;
    s->dstate = ok ? 3 : 4;
    if (!ok)
        return;
    win_profile *p = find_profile(c, r->iccid);
    if (!p)
        p = add_profile(c, r->iccid);
    if (p) {
        p->state = 2;
        p->error = 0;
        p->flags |= PF_DISCOVERED | PF_SERVER | PF_STARTED;
        snprintf(p->server, sizeof p->server, "%s", job->node);
    }
    if (s->flags & SF_AUTO)
        sim_euicc_enable(pc->euicc, r->iccid);
}

/* ---- a person at the PC --------------------------------------------------------------------- */

esim_err sim_winpc_user_delete_esim(sim_winpc *pc, sim_action_outcome *out, esim_error *err)
{
    memset(out, 0, sizeof *out);
    const sim_profile *target = sim_euicc_enabled(pc->euicc);
    for (size_t i = 0; !target && i < sim_euicc_profile_count(pc->euicc); i++) {
        const sim_profile *p = sim_euicc_profile_at(pc->euicc, i);
        if (p->profile_class == SIM_CLASS_OPERATIONAL)
            target = p;
    }
    if (!target) {
        snprintf(out->reason, sizeof out->reason, "there is no eSIM to delete");
        return esim_fail(err, ESIM_ESTATE, "%s has no eSIM to delete", pc->device_id);
    }
    if (!pc->csp.local_ui) {
        snprintf(out->reason, sizeof out->reason,
                 "refused: the eUICCs CSP policy LocalUIEnabled is false, so Settings does not "
                 "let the user change the eSIM");
        return ESIM_OK;
    }
    char iccid[SIM_ICCID_MAX + 1];
    snprintf(iccid, sizeof iccid, "%s", target->iccid);
    if (target->state == SIM_PROFILE_ENABLED) {
        sim_result r = sim_euicc_disable(pc->euicc, iccid);
        if (r != SIM_RES_OK) {
            snprintf(out->reason, sizeof out->reason, "the eUICC refused to disable %s: %s", iccid,
                     sim_result_name(r));
            return ESIM_OK;
        }
    }
    sim_result r = sim_euicc_delete(pc->euicc, iccid);
    if (r != SIM_RES_OK) {
        snprintf(out->reason, sizeof out->reason, "the eUICC refused to delete %s: %s", iccid,
                 sim_result_name(r));
        return ESIM_OK;
    }
    remove_profile(&pc->csp, iccid);
    pc->dirty = true;
    out->allowed = true;
    snprintf(out->reason, sizeof out->reason,
             "deleted %s in Settings > Network & internet > Cellular (LocalUIEnabled is true)",
             iccid);
    return ESIM_OK;
}

/* ---- persistence and description ------------------------------------------------------------ */

static json_t *csp_json(const sim_winpc *pc)
{
    const csp_state *c = &pc->csp;
    json_t *profiles = json_array(), *servers = json_array();
    for (size_t i = 0; i < c->n_prof; i++) {
        const win_profile *p = &c->profiles[i];
        json_array_append_new(profiles,
                              json_pack("{s:s, s:s, s:s, s:i, s:i, s:i}", "iccid", p->iccid,
                                        "server_name", p->server, "matching_id", p->mid, "state",
                                        p->state, "error_detail", p->error, "flags", p->flags));
    }
    for (size_t i = 0; i < c->n_srv; i++) {
        const win_server *s = &c->servers[i];
        json_array_append_new(servers, json_pack("{s:s, s:i, s:b, s:b, s:i}", "name", s->name,
                                                 "discovery_state", s->dstate, "auto_enable",
                                                 (s->flags & SF_AUTO) != 0, "is_discovery_server",
                                                 (s->flags & SF_DISC) != 0, "flags", s->flags));
    }
    return json_pack("{s:o, s:o, s:b, s:i, s:b, s:s?}", "profiles", profiles, "download_servers",
                     servers, "local_ui_enabled", c->local_ui, "actions_status", c->action_status,
                     "reset_pending", c->reset_pending, "pfn", c->pfn);
}

static json_t *winpc_json(const sim_winpc *pc, bool full)
{
    json_t *esims = json_array();
    for (size_t i = 0; i < sim_euicc_profile_count(pc->euicc); i++) {
        const sim_profile *p = sim_euicc_profile_at(pc->euicc, i);
        json_array_append_new(esims, json_pack("{s:s, s:b}", "iccid", p->iccid, "enabled",
                                               p->state == SIM_PROFILE_ENABLED));
    }
    json_t *j =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:s?, s:o, s:o}", "platform",
                  "windows", "device_id", pc->device_id, "eid", sim_euicc_eid(pc->euicc),
                  "manufacturer", pc->man, "model", pc->model, "os_version", pc->os, "provider_id",
                  pc->provider, "sessions", pc->sessions, "session_id", pc->session_id,
                  "channel_uri", pc->channel_uri, "csp", csp_json(pc), "esims", esims);
    if (j && full) {
        json_object_set_new(j, "euicc", sim_euicc_to_json(pc->euicc));
        sim_identity_to_json(&pc->id, j);
    }
    return j;
}

esim_err sim_winpc_describe_json(const sim_winpc *pc, esim_buf *out, esim_error *err)
{
    json_t *j = winpc_json(pc, false);
    esim_err rc = j ? sim_json_dump(j, out) : ESIM_ENOMEM;
    json_decref(j);
    return rc == ESIM_OK ? rc : esim_fail(err, rc, "out of memory");
}

esim_err sim_winpc_save(sim_winpc *pc, const char *path, esim_error *err)
{
    json_t *j = winpc_json(pc, true);
    if (!j)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    esim_err rc = sim_json_save(j, path, 0600, err);
    json_decref(j);
    if (rc == ESIM_OK) {
        pc->dirty = false;
        sim_euicc_mark_clean(pc->euicc);
    }
    return rc;
}

static esim_err bad(esim_error *err, const char *path, const char *what)
{
    return esim_fail(err, ESIM_EINVAL, "%s: damaged Windows PC file (%s)", path, what);
}

esim_err sim_winpc_load(const sim_pki *pki, const char *path, sim_winpc **out, esim_error *err)
{
    json_t *j = NULL;
    *out = NULL;
    esim_err rc = sim_json_load(path, 4u << 20, &j, err);
    if (rc != ESIM_OK)
        return rc;
    sim_winpc *pc = NULL;
    json_t *csp = json_object_get(j, "csp");
    sim_winpc_spec spec = {.device_id = sim_json_str(j, "device_id"),
                           .eid = sim_json_str(j, "eid"),
                           .manufacturer = sim_json_str(j, "manufacturer"),
                           .model = sim_json_str(j, "model"),
                           .os_version = sim_json_str(j, "os_version"),
                           .provider_id = sim_json_str(j, "provider_id")};
    if (!json_is_object(csp) || !spec.device_id || !spec.eid) {
        rc = bad(err, path, "device_id, eid or csp missing");
        goto out;
    }
    if ((rc = sim_winpc_new(pki, &spec, &pc, err)) != ESIM_OK)
        goto out;
    sim_euicc *e = NULL;
    if ((rc = sim_euicc_from_json(pki, json_object_get(j, "euicc"), &e, err)) != ESIM_OK)
        goto out;
    sim_euicc_free(pc->euicc);
    pc->euicc = e;
    pc->sessions = (unsigned)json_integer_value(json_object_get(j, "sessions"));
    pc->session_id = (uint32_t)json_integer_value(json_object_get(j, "session_id"));
    const char *ch = sim_json_str(j, "channel_uri");
    if (ch && (rc = sim_winpc_set_channel_uri(pc, ch, err)) != ESIM_OK)
        goto out;
    if ((rc = sim_identity_from_json(j, path, &pc->id, err)) != ESIM_OK)
        goto out;
    pc->csp.local_ui = json_is_true(json_object_get(csp, "local_ui_enabled"));
    pc->csp.action_status = (int)json_integer_value(json_object_get(csp, "actions_status"));
    pc->csp.reset_pending = json_is_true(json_object_get(csp, "reset_pending"));
    const char *pfn = sim_json_str(csp, "pfn");
    if (pfn && !(pc->csp.pfn = strdup(pfn))) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        goto out;
    }
    size_t k;
    json_t *it;
    json_array_foreach(json_object_get(csp, "profiles"), k, it)
    {
        const char *iccid = sim_json_str(it, "iccid"), *sn = sim_json_str(it, "server_name"),
                   *mid = sim_json_str(it, "matching_id");
        win_profile *p;
        if (!iccid || !sn || !mid || esim_iccid_validate(iccid, NULL) != ESIM_OK ||
            strlen(sn) >= sizeof p->server || strlen(mid) >= sizeof p->mid ||
            !(p = add_profile(&pc->csp, iccid))) {
            rc = bad(err, path, "a profile node");
            goto out;
        }
        snprintf(p->server, sizeof p->server, "%s", sn);
        snprintf(p->mid, sizeof p->mid, "%s", mid);
        p->state = (uint8_t)json_integer_value(json_object_get(it, "state"));
        p->error = (uint8_t)json_integer_value(json_object_get(it, "error_detail"));
        p->flags = (uint8_t)json_integer_value(json_object_get(it, "flags"));
        /* A download cut short by the restart starts again. */
        if (p->state == 1)
            p->flags &= (uint8_t)~PF_STARTED;
    }
    json_array_foreach(json_object_get(csp, "download_servers"), k, it)
    {
        const char *name = sim_json_str(it, "name");
        win_server *s;
        if (!name || strlen(name) >= sizeof s->name || !(s = add_server(&pc->csp, name))) {
            rc = bad(err, path, "a download server node");
            goto out;
        }
        s->dstate = (uint8_t)json_integer_value(json_object_get(it, "discovery_state"));
        s->flags = (uint8_t)json_integer_value(json_object_get(it, "flags"));
        if (s->dstate == 2) {
            s->dstate = 1;
            s->flags &= (uint8_t)~SF_STARTED;
        }
    }
    pc->dirty = false;
    sim_euicc_mark_clean(pc->euicc);
    *out = pc;
    pc = NULL;
out:
    sim_winpc_free(pc);
    json_decref(j);
    return rc;
}
