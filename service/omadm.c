/*
 * omadm.c — the Windows management endpoint: POST /ManagementServer/MDM.svc,
 * OMA-DM 1.2 sessions as MS-MDM runs them (windows-omadm.md in the design
 * notes; docs/service.md, "Windows devices").
 *
 * A session is a run of messages the device starts (Alert 1201, or 1200
 * after a WNS push). Each message is checked (type, size, the TLS client
 * certificate, SyncML, rate, MsgID order, the session's limits), then:
 *  - the device's Status and Results are applied to the queue entries they
 *    answer (CmdRef = the command UUID, or UUID.N inside it), each through
 *    the same store exchange as an Apple result, with every item's code and
 *    HRESULT kept and the raw elements stored;
 *  - the reply carries the SyncHdr Status, one Status per client command,
 *    then the service's own Gets (the WNS ChannelURI every session, the
 *    eUICC nodes) and the queued commands, then Final; a reply with Status
 *    elements only ends the session.
 * The queue, ledger, identity binding and group commit are the Apple
 * endpoint's: a Windows device is a device whose platform is "windows".
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "core/internal.h"
#include "restrictions/restrictions.h"
#include "service/omadm.h"
#include "service/service_internal.h"

#define OMADM_SESSION_IDLE_MS (5 * 60 * 1000)
#define OMADM_MAX_SESSIONS 65536
#define OMADM_MAX_SENT 64 /* commands delivered in one session */
#define OMADM_MAX_NODES 4 /* eUICCs one PC reports */
#define OMADM_ID_CHANNEL "esim-mdm.channel"
#define OMADM_ID_EUICCS "esim-mdm.euiccs"
#define OMADM_ID_EUICC "esim-mdm.euicc."
#define REPLY_END "<Final/></SyncBody></SyncML>\n"

typedef struct {
    char uuid[128];
    char request_type[64];
    esim_buf body;  /* as stored (the EID form of eUICC paths) */
    omadm_msg cmds; /* |body| parsed, once, when it was handed out (deliver) */
} omadm_sent;

typedef struct omadm_dev {
    struct omadm_dev *next;
    char udid[OMADM_MAX_DEVICE_ID + 1];
    /* The eUICC nodes the device listed, and the EID each Identifier gave. */
    char node[OMADM_MAX_NODES][65];
    char eid[OMADM_MAX_NODES][ESIM_EID_LEN + 1];
    size_t n_nodes;
    /* The session in progress, if any. */
    bool in_session;
    char session_id[OMADM_MAX_SESSION_ID + 1];
    char cert[65];
    char server_uri[256];
    unsigned long last_msg_id;
    unsigned msgs;
    size_t bytes;
    int64_t touched_ms;
    bool asked_discovery;                    /* the eUICCs Get went out in this session */
    bool ids_asked;                          /* the Identifier Gets of pending_nodes went out */
    char pending_nodes[OMADM_MAX_NODES][65]; /* children whose Identifier was asked */
    size_t n_pending_nodes;
    /* The commands handed out in this session, and the verification polls
     * queued during it (for the next one): each grown on demand up to
     * OMADM_MAX_SENT and freed when the session ends, so a PC between
     * sessions costs its eUICC map only (not 64 of each: ~23 KB a PC, kept
     * for every PC of the fleet). */
    omadm_sent *sent;
    size_t n_sent, cap_sent;
    char (*later)[128];
    size_t n_later, cap_later;
    esim_buf last_reply; /* for a repeated MsgID */
    bool busy;           /* a message's store half is on a pool worker: it owns the session */
} omadm_dev;

struct svc_omadm {
    omadm_dev *devs[SVC_BUCKETS];
    size_t n_devs;
};

/* ---- devices and sessions ---------------------------------------------------------- */

static void session_clear(omadm_dev *d)
{
    for (size_t i = 0; i < d->n_sent; i++) {
        esim_buf_free(&d->sent[i].body);
        omadm_msg_free(&d->sent[i].cmds);
    }
    free(d->sent);
    d->sent = NULL;
    d->n_sent = d->cap_sent = 0;
    free(d->later);
    d->later = NULL;
    d->n_later = d->cap_later = 0;
    esim_buf_free(&d->last_reply);
    d->in_session = false;
    d->session_id[0] = '\0';
    d->last_msg_id = 0;
    d->msgs = 0;
    d->bytes = 0;
    d->asked_discovery = false;
    d->ids_asked = false;
    d->n_pending_nodes = 0;
}

/* Room for one more command handed out in this session: false when it
 * has OMADM_MAX_SENT already, or memory ran out. */
static bool sent_room(omadm_dev *d)
{
    if (d->n_sent >= OMADM_MAX_SENT)
        return false;
    omadm_sent *s = esim_grow(d->sent, &d->cap_sent, d->n_sent + 1, sizeof *s);
    if (!s)
        return false;
    d->sent = s;
    return true;
}

/* The same for the verification polls queued for the next session. */
static bool later_room(omadm_dev *d)
{
    if (d->n_later >= OMADM_MAX_SENT)
        return false;
    char(*l)[128] = esim_grow(d->later, &d->cap_later, d->n_later + 1, sizeof *l);
    if (!l)
        return false;
    d->later = l;
    return true;
}

static omadm_dev *dev_find(esim_service *svc, const char *udid, bool create)
{
    svc_omadm *o = svc->omadm;
    size_t b = (size_t)(esim_hash_str(udid) % SVC_BUCKETS);
    for (omadm_dev *d = o->devs[b]; d; d = d->next)
        if (strcmp(d->udid, udid) == 0)
            return d;
    if (!create || o->n_devs >= OMADM_MAX_SESSIONS)
        return NULL;
    omadm_dev *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    snprintf(d->udid, sizeof d->udid, "%s", udid);
    d->next = o->devs[b];
    o->devs[b] = d;
    o->n_devs++;
    return d;
}

esim_err omadm_init(esim_service *svc, esim_error *err)
{
    svc->omadm = calloc(1, sizeof *svc->omadm);
    if (!svc->omadm)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    return api_windows_routes(svc, err);
}

void omadm_free(esim_service *svc)
{
    if (!svc->omadm)
        return;
    for (size_t i = 0; i < SVC_BUCKETS; i++)
        for (omadm_dev *d = svc->omadm->devs[i], *next; d; d = next) {
            next = d->next;
            session_clear(d);
            free(d);
        }
    free(svc->omadm);
    svc->omadm = NULL;
}

/* Sessions idle too long end; devices without a session and whose eUICC
 * map is empty are forgotten (the map is learned again in a session). */
void omadm_tick(esim_service *svc, int64_t now)
{
    svc_omadm *o = svc->omadm;
    if (!o)
        return;
    for (size_t i = 0; i < SVC_BUCKETS; i++) {
        omadm_dev **pp = &o->devs[i];
        while (*pp) {
            omadm_dev *d = *pp;
            if (d->busy) { /* its message's job owns it until its done */
                pp = &d->next;
                continue;
            }
            if (d->in_session && now - d->touched_ms > OMADM_SESSION_IDLE_MS)
                session_clear(d);
            if (!d->in_session && d->n_nodes == 0) {
                *pp = d->next;
                free(d);
                o->n_devs--;
            } else {
                pp = &d->next;
            }
        }
    }
}

size_t omadm_sessions(const esim_service *svc)
{
    size_t n = 0;
    for (size_t i = 0; svc->omadm && i < SVC_BUCKETS; i++)
        for (omadm_dev *d = svc->omadm->devs[i]; d; d = d->next)
            n += d->in_session;
    return n;
}

/* ---- replies -------------------------------------------------------------------------- */

static void reply_text(esim_service *svc, struct evhttp_request *req, int code, const char *text)
{
    http_reply(svc, req, M_ROUTE_MDM, code, "text/plain; charset=utf-8", text, strlen(text));
}

/* The message the service sends back, built as it goes. */
typedef struct {
    esim_buf b;
    unsigned next_id;  /* CmdIDs of the service's Status elements: 1, 2, ... */
    unsigned commands; /* commands (not Status) written */
    esim_err rc;
} writer;

static void w_printf(writer *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void w_printf(writer *w, const char *fmt, ...)
{
    if (w->rc != ESIM_OK)
        return;
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        w->rc = ESIM_EINVAL;
        return;
    }
    if ((size_t)n < sizeof small) {
        w->rc = esim_buf_append(&w->b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        w->rc = ESIM_ENOMEM;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    w->rc = esim_buf_append(&w->b, big, (size_t)n);
    free(big);
}

static void w_text(writer *w, const char *s)
{
    if (w->rc == ESIM_OK)
        w->rc = omadm_xml_escape(&w->b, s ? s : "");
}

static void w_status(writer *w, const char *msg_ref, const char *cmd_ref, const char *cmd, int code)
{
    w_printf(w, "<Status><CmdID>%u</CmdID><MsgRef>", w->next_id++);
    w_text(w, msg_ref);
    w_printf(w, "</MsgRef><CmdRef>");
    w_text(w, cmd_ref);
    w_printf(w, "</CmdRef><Cmd>");
    w_text(w, cmd);
    w_printf(w, "</Cmd><Data>%d</Data></Status>", code);
}

static void w_get(writer *w, const char *cmd_id, const char *uri)
{
    w_printf(w, "<Get><CmdID>");
    w_text(w, cmd_id);
    w_printf(w, "</CmdID><Item><Target><LocURI>");
    w_text(w, uri);
    w_printf(w, "</LocURI></Target></Item></Get>");
    w->commands++;
}

/* ---- the device's answers --------------------------------------------------------------- */

/* The queue command a CmdRef answers: "UUID" or "UUID.N" -> UUID. */
static void uuid_of_ref(const char *ref, char out[128])
{
    size_t n = strcspn(ref, ".");
    if (n >= 128)
        n = 127;
    memcpy(out, ref, n);
    out[n] = '\0';
}

static bool is_internal(const char *ref)
{
    return strncmp(ref, "esim-mdm.", 9) == 0;
}

/* A result applied to its queue entry, for the result hooks once its
 * transaction is committed. */
typedef struct {
    char udid[OMADM_MAX_DEVICE_ID + 1];
    char uuid[128];
    char status[24];
    esim_syncml_status *items;
    size_t n_items;
    char *strings; /* one block holding every item's strings */
    bool held;     /* the device's answer waits for the hooks (omadm_refill_answers) */
} omadm_hook_ctx;

/* ---- one message's store half -------------------------------------------------------------
 * A message's store operations (the identity binding, its answers, the
 * answers to the service's own Gets, generic alerts, the commands handed
 * out, verification polls) are one job: with PostgreSQL and a store pool
 * they run on a worker with the worker's store, while the loop serves
 * other devices; without a pool, at once on the loop with the service's.
 * The job owns the device's session (d->busy) until its done. What is the
 * loop's (counters, webhooks, result hooks, the answer) is gathered in the
 * job and done on the loop (omadm_job_done), in the order it happened. */

/* A result the store applied: its webhook, then its result hooks. */
typedef struct omadm_applied {
    struct omadm_applied *next;
    char uuid[128];
    bool ok;
    esim_buf raw;         /* the device's Status and Results elements for it */
    omadm_hook_ctx *hook; /* NULL when out of memory */
    /* Its webhook deliveries, written with the result in its unit
     * (webhooks_in_unit), to be started from the done. */
    bool written;
    struct hook_job *hooks;
} omadm_applied;

typedef struct omadm_job {
    pool_job job;            /* first: the pool's view of it */
    const esim_service *svc; /* its configuration only, on a worker */
    store *st;
    struct evhttp_request *req;
    omadm_dev *d;
    omadm_msg m;
    char cert[65];
    char *query; /* the request's query, for webhooks */
    size_t len;  /* the message's bytes */
    int64_t now;
    bool starts;
    /* What the loop does with it. */
    bool limit;  /* the session's limits reached: 413 */
    bool ended;  /* a reply of Status only: the session is over */
    bool ending; /* the device unenrolled or aborted the session: nothing more goes */
    esim_buf reply;
    /* A reply held for the next command (omadm_refill_answers): the
     * service's copy being sent, and what to undo if the refill is. */
    struct svc_reply *held;
    size_t n_sent_before, reply_len_before;
    struct omadm_job *next_inline;
    omadm_applied *applied, **applied_tail;
    /* Counters for svc->m, and store failures to report. */
    unsigned anomalies, results[2], bad_channels, channels, commands_sent, enqueued;
    unsigned store_failed, store_errors, sessions, refused;
} omadm_job;

static void hook_ctx_free(void *p)
{
    omadm_hook_ctx *h = p;
    if (!h)
        return;
    free(h->items);
    free(h->strings);
    free(h);
}

static void hook_run(esim_service *svc, void *p)
{
    omadm_hook_ctx *h = p;
    esim_service_result r = {
        .udid = h->udid,
        .command_uuid = h->uuid,
        .status = h->status,
        .msg = NULL,
        .platform = "windows",
        .syncml = h->items,
        .n_syncml = h->n_items,
        .answer_held = h->held,
    };
    svc_run_result_hooks(svc, &r);
}

/* The command the device answered, as the session delivered it. */
static const omadm_sent *sent_find(const omadm_dev *d, const char *uuid)
{
    for (size_t i = 0; i < d->n_sent; i++)
        if (strcmp(d->sent[i].uuid, uuid) == 0)
            return &d->sent[i];
    return NULL;
}

/* One item of an answer, before it becomes JSON and a hook's record. */
typedef struct {
    const char *cmd_ref, *cmd, *target, *hresult, *data;
    int code;
} item_view;

/* ---- verification of eSIM operations ------------------------------------------------------
 * A 200 on Add only means "accepted". After an eUICCs operation of the API
 * is acknowledged, the service reads, in later sessions, what became of it
 * (Profiles/{ICCID}/State and ErrorDetail, DownloadServers/{FQDN}/
 * DiscoveryState, Actions/Status) until it is done, failed with a reason,
 * or timed out. Each poll is a queued Get ("UUID-vN", request type
 * "eUICCs.Verify.<op>"); the outcome is a "verify" ledger event of the
 * operation's UUID. */

typedef enum { V_NONE, V_PROFILE, V_SERVER, V_DELETE, V_RESET } verify_kind;

static const struct {
    const char *request_type;
    verify_kind kind;
} verified_ops[] = {
    {"eUICCs.AddProfile", V_PROFILE},
    {"eUICCs.AddServer", V_SERVER},
    {"eUICCs.DeleteProfile", V_DELETE},
    {"eUICCs.Reset", V_RESET},
};

static const char *const error_details[] = {
    [0] = "None",
    [1] = "CardGeneralFailure",
    [3] = "ConfirmationCodeMissing",
    [5] = "ForbiddenByPolicy",
    [6] = "InvalidMatchingId",
    [7] = "NoEligibleProfileForThisDevice",
    [8] = "NotEnoughSpaceOnCard",
    [10] = "ProfileEidMismatch",
    [11] = "ProfileNotAvailableForNewBinding",
    [12] = "ProfileNotReleasedByOperator",
    [13] = "RemoteServerGeneralFailure",
    [14] = "RemoteServerUnreachable",
};

const char *esim_windows_error_detail_name(long code)
{
    if (code < 0 || (size_t)code >= sizeof error_details / sizeof error_details[0] ||
        !error_details[code])
        return "Unknown";
    return error_details[code];
}

static verify_kind verify_kind_of(const char *request_type, bool *is_poll)
{
    *is_poll = strncmp(request_type, "eUICCs.Verify.", 14) == 0;
    if (strncmp(request_type, "eUICCs.", 7) != 0)
        return V_NONE;
    const char *name = request_type + (*is_poll ? 14 : 7); /* "AddProfile" */
    for (size_t i = 0; i < sizeof verified_ops / sizeof verified_ops[0]; i++)
        if (strcmp(name, verified_ops[i].request_type + 7) == 0)
            return verified_ops[i].kind;
    return V_NONE;
}

static void verify_event(omadm_job *j, const char *udid, const char *op_uuid, const char *detail)
{
    if (esim_store_event_append(j->st, "verify", udid, op_uuid, detail, NULL, 0, esim_now_ms(),
                                NULL) != ESIM_OK)
        j->store_failed++;
}

/* The EID and the object path ("Profiles/ICCID", "DownloadServers/FQDN")
 * of the first item of a command body written with EID paths, parsed. */
static bool op_target(const omadm_msg *cmds, char eid[ESIM_EID_LEN + 1], char obj[256])
{
    bool ok = false;
    const char *t = cmds->n_cmds && cmds->cmds[0].n_items ? cmds->cmds[0].items[0].target : NULL;
    const char *root = OMADM_EUICCS "/";
    if (t && strncmp(t, root, strlen(root)) == 0) {
        const char *p = t + strlen(root);
        size_t el = strcspn(p, "/");
        if (el == ESIM_EID_LEN && p[el] == '/') {
            memcpy(eid, p, el);
            eid[el] = '\0';
            const char *rest = p + el + 1;
            /* Two segments: Profiles/ICCID, DownloadServers/FQDN, Actions/X. */
            size_t a = strcspn(rest, "/");
            size_t b = rest[a] == '/' ? strcspn(rest + a + 1, "/") : 0;
            size_t l = a + (b ? b + 1 : 0);
            if (l < 256) {
                memcpy(obj, rest, l);
                obj[l] = '\0';
                ok = true;
            }
        }
    }
    return ok;
}

/* Queues poll |n| of the operation |op_uuid| and asks for a push later. */
static esim_err syncml_enqueue_on(const esim_service *svc, store *st, const char *uuid,
                                  const char *request_type, const char *syncml, size_t len,
                                  const char *const *udids, size_t n, const esim_enqueue_opts *opts,
                                  char uuid_out[128], bool *enqueue_failed, esim_error *err);

static void verify_poll(omadm_job *j, omadm_dev *d, const char *op_uuid, verify_kind k,
                        const char *op_name, const char *eid, const char *obj, int n)
{
    char nodes[2][300];
    const char *np[2] = {nodes[0], nodes[1]};
    size_t nn = 1;
    switch (k) {
    case V_PROFILE:
        snprintf(nodes[0], sizeof nodes[0], "%s/State", obj);
        snprintf(nodes[1], sizeof nodes[1], "%s/ErrorDetail", obj);
        nn = 2;
        break;
    case V_SERVER:
        snprintf(nodes[0], sizeof nodes[0], "%s/DiscoveryState", obj);
        break;
    case V_DELETE:
        snprintf(nodes[0], sizeof nodes[0], "%s/State", obj);
        break;
    default:
        snprintf(nodes[0], sizeof nodes[0], "Actions/Status");
        break;
    }
    esim_windows_op get = {.kind = ESIM_WIN_GET, .eid = eid, .nodes = np, .n_nodes = nn};
    char uuid[128], rt[64];
    snprintf(uuid, sizeof uuid, "%s-v%d", op_uuid, n);
    snprintf(rt, sizeof rt, "eUICCs.Verify.%s", op_name);
    esim_buf body = {0};
    esim_error e = {{0}};
    esim_err rc = esim_windows_op_syncml(&get, uuid, &body, &e);
    const char *udid = d->udid;
    esim_enqueue_opts o = {.push = false};
    bool failed = false;
    if (rc == ESIM_OK)
        rc = syncml_enqueue_on(j->svc, j->st, uuid, rt, (const char *)body.data, body.len, &udid, 1,
                               &o, NULL, &failed, &e);
    esim_buf_free(&body);
    j->store_failed += failed;
    if (rc != ESIM_OK) {
        char detail[600];
        snprintf(detail, sizeof detail, "failed: cannot queue verification poll %d: %s", n, e.msg);
        verify_event(j, d->udid, op_uuid, detail);
        return;
    }
    j->enqueued++;
    if (later_room(d))
        snprintf(d->later[d->n_later++], sizeof d->later[0], "%s", uuid);
    /* The wake-up for the poll is a push owed in the store: it survives a
     * restart of the service, as the queued poll and the ledger do. */
    if (esim_store_device_owe_push(j->st, d->udid,
                                   esim_now_ms() + j->svc->cfg.windows_verify_interval_ms,
                                   NULL) != ESIM_OK)
        j->store_errors++;
}

/* The data and code of the answer's item whose target ends with |leaf|. */
static const item_view *item_for(const item_view *iv, size_t n, const char *leaf)
{
    size_t ll = strlen(leaf);
    for (size_t i = 0; i < n; i++) {
        size_t tl = strlen(iv[i].target);
        if (tl >= ll && strcmp(iv[i].target + tl - ll, leaf) == 0 &&
            (iv[i].data || iv[i].code != 200))
            return &iv[i];
    }
    return NULL;
}

/* What a poll says: 1 done, -1 failed, 0 still going; |why| in words. */
static int judge(verify_kind k, const item_view *iv, size_t n, char *why, size_t why_len)
{
    const item_view *a = NULL;
    switch (k) {
    case V_PROFILE: {
        a = item_for(iv, n, "/State");
        if (!a || a->code == 404) {
            snprintf(why, why_len, "the profile is not on the eUICC (State: %d)", a ? a->code : 0);
            return -1;
        }
        long st = a->data ? strtol(a->data, NULL, 10) : 0;
        if (st == 2) {
            snprintf(why, why_len, "installed (State 2)");
            return 1;
        }
        if (st == 4) {
            const item_view *ed = item_for(iv, n, "/ErrorDetail");
            long code = ed && ed->data ? strtol(ed->data, NULL, 10) : -1;
            snprintf(why, why_len, "State 4 Error, ErrorDetail %ld %s", code,
                     esim_windows_error_detail_name(code));
            return -1;
        }
        snprintf(why, why_len, "State %ld %s", st,
                 st == 1   ? "Installing"
                 : st == 3 ? "Deleting"
                           : "?");
        return 0;
    }
    case V_SERVER: {
        a = item_for(iv, n, "/DiscoveryState");
        long st = a && a->data ? strtol(a->data, NULL, 10) : 0;
        if (!a || a->code == 404) {
            snprintf(why, why_len, "the download server node is gone");
            return -1;
        }
        if (st == 3) {
            snprintf(why, why_len, "discovery completed (DiscoveryState 3)");
            return 1;
        }
        if (st == 4) {
            snprintf(why, why_len, "discovery failed (DiscoveryState 4)");
            return -1;
        }
        snprintf(why, why_len, "DiscoveryState %ld %s", st, st == 2 ? "Executing" : "Requested");
        return 0;
    }
    case V_DELETE: {
        a = item_for(iv, n, "/State");
        if (!a || a->code == 404) {
            snprintf(why, why_len, "deleted (the profile node is gone)");
            return 1;
        }
        long st = a->data ? strtol(a->data, NULL, 10) : 0;
        if (st == 4) {
            snprintf(why, why_len, "State 4 Error while deleting");
            return -1;
        }
        snprintf(why, why_len, "State %ld %s", st, st == 3 ? "Deleting" : "still installed");
        return 0;
    }
    default: {
        a = item_for(iv, n, "/Status");
        if (!a || !a->data) {
            snprintf(why, why_len, "Actions/Status unreadable (%d)", a ? a->code : 0);
            return -1;
        }
        unsigned long hr = strtoul(a->data, NULL, 0);
        if (hr == 0) {
            snprintf(why, why_len, "reset done (Actions/Status S_OK)");
            return 1;
        }
        if (hr == 1) {
            snprintf(why, why_len, "reset in progress (Actions/Status S_FALSE)");
            return 0;
        }
        snprintf(why, why_len, "reset failed (Actions/Status 0x%08lX)", hr);
        return -1;
    }
    }
}

/* After an answer to |sent| was applied: start, continue or end its
 * verification. */
static void verify_after(omadm_job *j, omadm_dev *d, const omadm_sent *sent, bool ok,
                         const item_view *iv, size_t n)
{
    bool is_poll = false;
    verify_kind k = verify_kind_of(sent->request_type, &is_poll);
    if (k == V_NONE)
        return;
    const char *op_name = sent->request_type + (is_poll ? 14 : 7);
    char op_uuid[128];
    int poll = 0;
    snprintf(op_uuid, sizeof op_uuid, "%s", sent->uuid);
    if (is_poll) {
        char *v = strrchr(op_uuid, '-');
        if (!v || v[1] != 'v')
            return;
        poll = atoi(v + 2);
        *v = '\0';
    }
    char eid[ESIM_EID_LEN + 1], obj[256], detail[400], why[200];
    if (!op_target(&sent->cmds, eid, obj))
        return;
    if (!is_poll) {
        if (!ok) {
            const item_view *bad = NULL;
            for (size_t i = 0; i < n && !bad; i++)
                if (iv[i].code < 200 || iv[i].code > 299)
                    bad = &iv[i];
            snprintf(detail, sizeof detail, "failed: %s %.200s answered %d%s%s",
                     bad ? bad->cmd : "?", bad ? bad->target : "", bad ? bad->code : 0,
                     bad && bad->hresult[0] ? " " : "", bad ? bad->hresult : "");
            verify_event(j, d->udid, op_uuid, detail);
            return;
        }
        verify_event(j, d->udid, op_uuid, "pending: accepted, polling");
        verify_poll(j, d, op_uuid, k, op_name, eid, obj, 1);
        return;
    }
    int verdict = judge(k, iv, n, why, sizeof why);
    if (verdict != 0) {
        snprintf(detail, sizeof detail, "%s: %s", verdict > 0 ? "done" : "failed", why);
        verify_event(j, d->udid, op_uuid, detail);
        return;
    }
    store_command_info info;
    store_queue_entry *entries = NULL;
    size_t ne = 0;
    int64_t started = esim_now_ms();
    if (esim_store_command_get(j->st, op_uuid, NULL, 0, &info, &entries, &ne, NULL) == ESIM_OK)
        started = info.created_at;
    esim_store_queue_entries_free(entries, ne);
    if (esim_now_ms() - started > j->svc->cfg.windows_verify_timeout_ms) {
        snprintf(detail, sizeof detail, "timeout: still %s after %lld s", why,
                 (long long)((esim_now_ms() - started) / 1000));
        verify_event(j, d->udid, op_uuid, detail);
        return;
    }
    snprintf(detail, sizeof detail, "pending: %s (poll %d)", why, poll);
    verify_event(j, d->udid, op_uuid, detail);
    verify_poll(j, d, op_uuid, k, op_name, eid, obj, poll + 1);
}

/* The webhook event of a Windows result, in the shape of an Apple one
 * (mdm.Connect, acknowledge_event): the DeviceID as udid, status
 * Acknowledged or Error, the command UUID, the request's query as
 * url_params, and as raw_payload the device's Status and Results elements
 * for the command, inside a SyncBody: each item's code (and HRESULT, and
 * Results data) as the PC sent them. Its message in |msg|, its raw payload
 * in |body| (the caller's to free); false out of memory. */
static bool result_event(const char *udid, const char *uuid, bool ok, const esim_buf *raw,
                         esim_msg *msg, esim_buf *body)
{
    if (esim_buf_append_str(body, "<SyncBody>") != ESIM_OK ||
        esim_buf_append(body, raw->data, raw->len) != ESIM_OK ||
        esim_buf_append_str(body, "</SyncBody>") != ESIM_OK)
        return false;
    msg->kind = ESIM_MSG_RESULT;
    snprintf(msg->udid, sizeof msg->udid, "%s", udid);
    snprintf(msg->command_uuid, sizeof msg->command_uuid, "%s", uuid);
    msg->status = ok ? ESIM_STATUS_ACKNOWLEDGED : ESIM_STATUS_ERROR;
    return true;
}

/* Its outbox row joins the batch (a store with batches: SQLite). */
static void result_webhook(esim_service *svc, const char *udid, const char *uuid, bool ok,
                           const esim_buf *raw, const char *query)
{
    if (!svc->webhooks)
        return;
    esim_msg *msg = calloc(1, sizeof *msg);
    esim_buf body = {0};
    if (msg && result_event(udid, uuid, ok, raw, msg, &body)) {
        svc_event_extra x = {.query = query, .tally = -1};
        svc_after_commit(svc, msg, body.data, body.len, &x, false, NULL, NULL);
        esim_msg_free(msg);
    }
    free(msg);
    esim_buf_free(&body);
}

/* Or its outbox rows written with the result, in its unit on |job|'s store
 * (a store without batches: PostgreSQL), the deliveries in *hooks. */
static esim_err result_webhook_write(omadm_job *job, const char *udid, const char *uuid, bool ok,
                                     const esim_buf *raw, struct hook_job **hooks, esim_error *err)
{
    esim_msg *msg = calloc(1, sizeof *msg);
    esim_buf body = {0};
    esim_err rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (msg && result_event(udid, uuid, ok, raw, msg, &body)) {
        svc_event_extra x = {.query = job->query, .tally = -1};
        rc = webhooks_write(job->svc, job->st, msg, body.data, body.len, &x, hooks, err);
        esim_msg_free(msg);
    }
    free(msg);
    esim_buf_free(&body);
    return rc;
}

/* Applies the Status and Results the device sent for queue command |uuid|. */
static esim_err apply_answer(omadm_job *job, omadm_dev *d, const omadm_msg *m, const char *uuid,
                             esim_error *err)
{
    const omadm_sent *sent = sent_find(d, uuid);
    static const omadm_msg none = {0};
    const omadm_msg *cmds = sent ? &sent->cmds : &none;
    item_view *iv = calloc(m->n_cmds * 2 + 1, sizeof *iv);
    esim_buf raw = {0};
    json_t *arr = json_array();
    if (!iv || !arr) {
        free(iv);
        json_decref(arr);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    size_t n = 0;
    bool ok = true;
    for (size_t i = 0; i < m->n_cmds; i++) {
        const omadm_cmd *c = &m->cmds[i];
        if ((c->verb != OMADM_STATUS && c->verb != OMADM_RESULTS) || !c->cmd_ref ||
            omadm_status_of_hdr(c))
            continue; /* the SyncHdr's Status answers none of the queue's commands */
        char u[128];
        uuid_of_ref(c->cmd_ref, u);
        if (strcmp(u, uuid) != 0)
            continue;
        esim_buf_append_str(&raw, c->raw ? c->raw : "");
        if (c->verb == OMADM_RESULTS) {
            /* The data goes with the Get's item of the same LocURI. */
            for (size_t k = 0; k < c->n_items; k++) {
                const char *src = c->items[k].source ? c->items[k].source : "";
                bool matched = false;
                for (size_t j = 0; j < n && !matched; j++)
                    if (strcmp(iv[j].cmd_ref, c->cmd_ref) == 0 && !iv[j].data &&
                        (!iv[j].target[0] || strcmp(iv[j].target, src) == 0)) {
                        iv[j].data = c->items[k].data ? c->items[k].data : "";
                        if (!iv[j].target[0])
                            iv[j].target = src;
                        matched = true;
                    }
                if (!matched && n < m->n_cmds * 2 + 1)
                    iv[n++] = (item_view){
                        c->cmd_ref, "Get", src, "", c->items[k].data ? c->items[k].data : "", 200};
            }
            continue;
        }
        int code = omadm_status_code(c->data);
        if (code < 200 || code > 299)
            ok = false;
        /* The item(s) of the command this Status answers. */
        const char *target = "";
        for (size_t j = 0; j < cmds->n_cmds; j++)
            if (strcmp(cmds->cmds[j].cmd_id, c->cmd_ref) == 0 && cmds->cmds[j].n_items > 0)
                target = cmds->cmds[j].items[0].target;
        if (n < m->n_cmds * 2 + 1)
            iv[n++] = (item_view){
                c->cmd_ref, c->cmd ? c->cmd : "", target, c->hresult ? c->hresult : "", NULL, code};
    }
    for (size_t j = 0; j < n; j++) {
        json_t *o = json_pack("{s:s,s:s,s:s,s:i}", "cmd_ref", iv[j].cmd_ref, "cmd", iv[j].cmd,
                              "target", iv[j].target, "code", iv[j].code);
        if (o && iv[j].hresult[0])
            json_object_set_new(o, "hresult", json_string(iv[j].hresult));
        if (o && iv[j].data)
            json_object_set_new(o, "data", json_string(iv[j].data));
        json_array_append_new(arr, o);
    }
    json_t *wrap = json_pack("{s:o}", "syncml", arr);
    char *items_json = wrap ? json_dumps(wrap, JSON_COMPACT) : NULL;
    json_decref(wrap);

    const char *status = ok ? "Acknowledged" : "Error";
    store_exchange_in in = {
        .udid = d->udid,
        .cert_sha256 = d->cert,
        .status = status,
        .command_uuid = uuid,
        .raw = raw.data,
        .raw_len = raw.len,
        .error_chain_json = items_json,
        .hold_next = true,
    };
    store_exchange_out out = {0};
    /* With webhooks on a store without batches, the result and its
     * event's outbox rows are one unit. */
    bool in_unit = webhooks_in_unit(job->svc);
    struct hook_job *hooks = NULL;
    esim_err rc = in_unit ? esim_store_unit_begin_whole(job->st, err) : ESIM_OK;
    if (rc == ESIM_OK) {
        rc = esim_store_device_exchange(job->st, &in, esim_now_ms(), &out, err);
        if (in_unit) {
            if (rc == ESIM_OK && out.outcome == STORE_RESULT_APPLIED)
                rc = result_webhook_write(job, d->udid, uuid, ok, &raw, &hooks, err);
            esim_err end = esim_store_unit_end(job->st, rc == ESIM_OK, err);
            if (rc == ESIM_OK)
                rc = end;
            if (rc != ESIM_OK) {
                webhooks_discard(hooks);
                hooks = NULL;
            }
        }
    }
    esim_buf_free(&out.next.body);
    free(items_json);
    /* Its webhook and hooks, for the loop (omadm_job_done), in this order. */
    omadm_applied *a = NULL;
    if (rc == ESIM_OK && out.outcome == STORE_RESULT_APPLIED &&
        (a = calloc(1, sizeof *a)) != NULL) {
        snprintf(a->uuid, sizeof a->uuid, "%s", uuid);
        a->ok = ok;
        a->written = in_unit;
        a->hooks = hooks;
        hooks = NULL;
        a->raw = raw;
        memset(&raw, 0, sizeof raw);
        *job->applied_tail = a;
        job->applied_tail = &a->next;
    }
    esim_buf_free(&raw);
    webhooks_discard(hooks); /* out of memory: the rows stay for a restart */
    if (rc == ESIM_OK && out.outcome == STORE_RESULT_ANOMALY)
        job->anomalies++;
    if (rc == ESIM_OK && out.outcome == STORE_RESULT_APPLIED) {
        job->results[ok ? 0 : 1]++;
        /* The hook's copy: one block of strings, pointers into it. */
        size_t total = 0;
        for (size_t j = 0; j < n; j++)
            total += strlen(iv[j].cmd_ref) + strlen(iv[j].cmd) + strlen(iv[j].target) +
                     strlen(iv[j].hresult) + (iv[j].data ? strlen(iv[j].data) : 0) + 5;
        omadm_hook_ctx *h = calloc(1, sizeof *h);
        char *block = malloc(total + 1);
        esim_syncml_status *items = calloc(n + 1, sizeof *items);
        if (h && block && items) {
            snprintf(h->udid, sizeof h->udid, "%s", d->udid);
            snprintf(h->uuid, sizeof h->uuid, "%s", uuid);
            snprintf(h->status, sizeof h->status, "%s", status);
            char *p = block;
#define COPY(dst, src)                                                                             \
    do {                                                                                           \
        size_t l_ = strlen(src) + 1;                                                               \
        memcpy(p, src, l_);                                                                        \
        dst = p;                                                                                   \
        p += l_;                                                                                   \
    } while (0)
            for (size_t j = 0; j < n; j++) {
                COPY(items[j].cmd_ref, iv[j].cmd_ref);
                COPY(items[j].cmd, iv[j].cmd);
                COPY(items[j].target, iv[j].target);
                COPY(items[j].hresult, iv[j].hresult);
                if (iv[j].data)
                    COPY(items[j].data, iv[j].data);
                items[j].code = iv[j].code;
            }
#undef COPY
            h->items = items;
            h->n_items = n;
            h->strings = block;
            if (a) {
                a->hook = h;
                block = NULL;
                items = NULL;
                h = NULL;
            }
        }
        free(h);
        free(block);
        free(items);
        if (sent)
            verify_after(job, d, sent, ok, iv, n);
    }
    free(iv);
    return rc;
}

/* The ChannelURI the device reported: a new or revived one replaces the
 * stored push address (a 410 from WNS marked the old one dead). */
static void learn_channel(omadm_job *j, omadm_dev *d, const char *uri)
{
    if (!uri || strncmp(uri, "https://", 8) != 0 || strlen(uri) >= STORE_PUSH_TOKEN_MAX) {
        j->bad_channels++;
        return;
    }
    for (const char *c = uri; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == '"' || *c == '<' || *c == '>') {
            j->bad_channels++;
            return;
        }
    store_push_target t;
    if (esim_store_push_target(j->st, d->udid, &t, NULL) == ESIM_OK &&
        t.push_state == STORE_PUSH_VALID && strcmp(t.push_token, uri) == 0)
        return;
    esim_error e = {{0}};
    if (esim_store_device_token_update(j->st, d->udid, d->cert, OMADM_PROVIDER_ID, uri, "wns",
                                       esim_now_ms(), &e) != ESIM_OK)
        j->store_failed++;
    else
        j->channels++;
}

/* The service's own Gets: the ChannelURI, the eUICC list, an Identifier. */
static void apply_internal(omadm_job *j, omadm_dev *d, const omadm_cmd *c)
{
    const char *ref = c->cmd_ref;
    if (c->verb == OMADM_STATUS)
        return; /* a Get that failed (404: no eUICC, no push channel) says nothing more */
    const char *data = c->n_items ? c->items[0].data : NULL;
    if (strcmp(ref, OMADM_ID_CHANNEL) == 0) {
        learn_channel(j, d, data);
    } else if (strcmp(ref, OMADM_ID_EUICCS) == 0) {
        /* Children joined with '/'; ask each unknown one its Identifier. */
        char names[OMADM_MAX_NODES][65];
        size_t n = 0;
        const char *p = data ? data : "";
        while (*p && n < OMADM_MAX_NODES) {
            size_t l = strcspn(p, "/");
            if (l > 0 && l < 65) {
                memcpy(names[n], p, l);
                names[n][l] = '\0';
                n++;
            }
            p += l;
            if (*p == '/')
                p++;
        }
        /* Forget nodes no longer listed. */
        size_t kept = 0;
        for (size_t i = 0; i < d->n_nodes; i++) {
            bool listed = false;
            for (size_t k = 0; k < n; k++)
                listed |= strcmp(names[k], d->node[i]) == 0;
            if (listed) {
                memmove(d->node[kept], d->node[i], sizeof d->node[0]);
                memmove(d->eid[kept], d->eid[i], sizeof d->eid[0]);
                kept++;
            }
        }
        d->n_nodes = kept;
        d->n_pending_nodes = 0;
        for (size_t k = 0; k < n; k++) {
            bool known = false;
            for (size_t i = 0; i < d->n_nodes; i++)
                known |= strcmp(names[k], d->node[i]) == 0;
            if (!known)
                memcpy(d->pending_nodes[d->n_pending_nodes++], names[k], sizeof names[k]);
        }
    } else if (strncmp(ref, OMADM_ID_EUICC, strlen(OMADM_ID_EUICC)) == 0) {
        unsigned long k = strtoul(ref + strlen(OMADM_ID_EUICC), NULL, 10);
        if (k >= d->n_pending_nodes || !data || esim_eid_validate(data, NULL) != ESIM_OK)
            return;
        if (d->n_nodes < OMADM_MAX_NODES) {
            memcpy(d->node[d->n_nodes], d->pending_nodes[k], sizeof d->node[0]);
            snprintf(d->eid[d->n_nodes], sizeof d->eid[0], "%s", data);
            d->n_nodes++;
            /* The device's EID, as the Apple side learns it from an answer. */
            store_exchange_in in = {.udid = d->udid,
                                    .cert_sha256 = d->cert,
                                    .status = "Idle",
                                    .eid = data,
                                    .hold_next = true};
            store_exchange_out out = {0};
            if (esim_store_device_exchange(j->st, &in, esim_now_ms(), &out, NULL) != ESIM_OK)
                j->store_failed++;
            esim_buf_free(&out.next.body);
        }
    }
}

/* ---- identity ---------------------------------------------------------------------------- */

static const char *devinfo(const omadm_msg *m, const char *leaf)
{
    char uri[64];
    snprintf(uri, sizeof uri, "./DevInfo/%s", leaf);
    for (size_t i = 0; i < m->n_cmds; i++) {
        const omadm_cmd *c = &m->cmds[i];
        if (c->verb != OMADM_REPLACE && c->verb != OMADM_ADD && c->verb != OMADM_RESULTS)
            continue;
        for (size_t k = 0; k < c->n_items; k++) {
            const omadm_item *it = &c->items[k];
            const char *u = it->source ? it->source : it->target;
            if (u && strcmp(u, uri) == 0 && it->data && strlen(it->data) < 60)
                return it->data;
        }
    }
    return NULL;
}

/* Binds the DeviceID to the certificate at its first session, or checks
 * the binding. ESIM_EAUTH/ESIM_ESTATE: 403, nothing changed. */
static esim_err bind_identity(omadm_job *j, const omadm_msg *m, const char *cert, esim_error *err)
{
    store_device dev;
    esim_err rc = esim_store_device_get(j->st, m->source, &dev, NULL);
    if (rc == ESIM_OK && strcmp(dev.platform, "windows") != 0)
        return esim_fail(err, ESIM_EAUTH,
                         "DeviceID %s is enrolled as an Apple device: an OMA-DM client cannot "
                         "speak for it",
                         m->source);
    if (rc == ESIM_OK && dev.enrolled && dev.cert_sha256[0] && cert[0] &&
        strcmp(dev.cert_sha256, cert) != 0)
        return esim_fail(err, ESIM_EAUTH,
                         "DeviceID %s is bound to another client certificate: a device cannot "
                         "speak for another",
                         m->source);
    if (rc == ESIM_OK && dev.enrolled)
        return ESIM_OK;
    if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
        return rc;
    /* First contact (or back after an unenrolment): the device becomes
     * known, bound to this certificate. */
    store_authenticate_in in = {
        .udid = m->source,
        .topic = OMADM_PROVIDER_ID,
        .cert_sha256 = cert,
        .product_name = devinfo(m, "Man"),
        .model = devinfo(m, "Mod"),
        .os_version = devinfo(m, "SwV"),
        .platform = "windows",
    };
    return esim_store_device_authenticate(j->st, &in, esim_now_ms(), err);
}

/* ---- the endpoint ------------------------------------------------------------------------ */

static bool content_type_ok(struct evhttp_request *req, bool *wbxml)
{
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    *wbxml = false;
    if (!ct)
        return false;
    size_t n = strcspn(ct, "; \t");
    if ((n == 29 && strncasecmp(ct, "application/vnd.syncml.dm+xml", n) == 0) ||
        (n == 26 && strncasecmp(ct, "application/vnd.syncml+xml", n) == 0))
        return true;
    *wbxml = strstr(ct, "wbxml") != NULL;
    return false;
}

/* Rewrites eUICCs/{EID}/ into eUICCs/{node}/ when the device named the
 * node of that EID otherwise. */
static esim_err body_for_device(const omadm_dev *d, const esim_buf *body, esim_buf *out)
{
    esim_buf_free(out);
    const char *s = (const char *)body->data;
    size_t len = body->len;
    esim_err rc = ESIM_OK;
    size_t i = 0;
    while (i < len && rc == ESIM_OK) {
        const char *hit = memmem(s + i, len - i, "eUICCs/", 7);
        if (!hit) {
            rc = esim_buf_append(out, s + i, len - i);
            break;
        }
        size_t at = (size_t)(hit - s) + 7;
        rc = esim_buf_append(out, s + i, at - i);
        i = at;
        for (size_t k = 0; rc == ESIM_OK && k < d->n_nodes; k++) {
            size_t el = strlen(d->eid[k]);
            if (strcmp(d->eid[k], d->node[k]) != 0 && len - i > el &&
                memcmp(s + i, d->eid[k], el) == 0 && s[i + el] == '/') {
                rc = omadm_xml_escape(out, d->node[k]);
                i += el;
                break;
            }
        }
    }
    return rc;
}

/* Hands out queued commands into |w| (up to a budget) and remembers them. */
static esim_err deliver(omadm_job *j, omadm_dev *d, writer *w, esim_error *err)
{
    size_t budget = j->svc->cfg.max_body / 2;
    while (w->b.len < budget && sent_room(d)) {
        const char *skip[2 * OMADM_MAX_SENT];
        size_t n_skip = 0;
        for (size_t i = 0; i < d->n_sent; i++)
            skip[n_skip++] = d->sent[i].uuid;
        for (size_t i = 0; i < d->n_later; i++)
            skip[n_skip++] = d->later[i];
        store_exchange_in in = {
            .udid = d->udid,
            .cert_sha256 = d->cert,
            .status = "Idle",
            .skip_uuids = skip,
            .n_skip = n_skip,
        };
        store_exchange_out out = {0};
        esim_err rc = esim_store_device_exchange(j->st, &in, esim_now_ms(), &out, err);
        if (rc != ESIM_OK || !out.next.present) {
            esim_buf_free(&out.next.body);
            return rc;
        }
        omadm_sent *s = &d->sent[d->n_sent++];
        snprintf(s->uuid, sizeof s->uuid, "%s", out.next.command_uuid);
        snprintf(s->request_type, sizeof s->request_type, "%s", out.next.request_type);
        s->body = out.next.body;
        /* An Apple command queued for a Windows device can never run on it:
         * answered for it, as the format error it is. */
        if (omadm_parse_commands(s->body.data, s->body.len, s->uuid, &s->cmds, NULL) != ESIM_OK) {
            store_exchange_in fe = {.udid = d->udid,
                                    .cert_sha256 = d->cert,
                                    .status = "CommandFormatError",
                                    .command_uuid = s->uuid,
                                    .raw = "not a SyncML command",
                                    .raw_len = 20,
                                    .hold_next = true};
            store_exchange_out fo = {0};
            if (esim_store_device_exchange(j->st, &fe, esim_now_ms(), &fo, NULL) != ESIM_OK)
                j->store_failed++;
            esim_buf_free(&fo.next.body);
            continue;
        }
        esim_buf wire = {0};
        if (body_for_device(d, &s->body, &wire) != ESIM_OK) {
            esim_buf_free(&wire);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        if (w->rc == ESIM_OK)
            w->rc = esim_buf_append(&w->b, wire.data, wire.len);
        esim_buf_free(&wire);
        w->commands++;
        j->commands_sent++;
    }
    return ESIM_OK;
}

static svc_reply *reply_syncml(esim_service *svc, struct evhttp_request *req, omadm_dev *d,
                               const esim_buf *b)
{
    esim_buf_free(&d->last_reply);
    esim_buf_append(&d->last_reply, b->data, b->len);
    return http_reply(svc, req, M_ROUTE_MDM, 200, "application/vnd.syncml.dm+xml", b->data, b->len);
}

/* The store refused: 403 for identity, 500 for the store. */
static void reply_store_error(esim_service *svc, struct evhttp_request *req, esim_err rc,
                              const esim_error *e)
{
    if (rc == ESIM_EAUTH || rc == ESIM_ESTATE || rc == ESIM_ENOTFOUND) {
        svc->m.auth_refused++;
        reply_text(svc, req, 403, e->msg);
    } else if (rc == ESIM_EINVAL) {
        svc->m.malformed++;
        reply_text(svc, req, 400, e->msg);
    } else {
        svc_store_failed(svc, NULL);
        reply_text(svc, req, 500, "the store failed; try again later");
    }
}

static bool has_alert(const omadm_msg *m, const char *code)
{
    for (size_t i = 0; i < m->n_cmds; i++)
        if (m->cmds[i].verb == OMADM_ALERT && m->cmds[i].parent < 0 &&
            strcmp(m->cmds[i].data, code) == 0)
            return true;
    return false;
}

/* A generic alert (1226): unenrolment ends the device's enrolment; others
 * go to the ledger. */
static esim_err generic_alerts(omadm_job *j, omadm_dev *d, const omadm_msg *m, bool *unenrolled,
                               esim_error *err)
{
    for (size_t i = 0; i < m->n_cmds; i++) {
        const omadm_cmd *c = &m->cmds[i];
        if (c->verb != OMADM_ALERT || strcmp(c->data, "1226") != 0)
            continue;
        for (size_t k = 0; k < c->n_items; k++) {
            const omadm_item *it = &c->items[k];
            const char *type = it->type ? it->type : c->meta_type ? c->meta_type : "";
            if (strcmp(type, "com.microsoft:mdm.unenrollment.userrequest") == 0) {
                esim_err rc =
                    esim_store_device_checkout(j->st, d->udid, d->cert, esim_now_ms(), err);
                if (rc != ESIM_OK)
                    return rc;
                *unenrolled = true;
                return ESIM_OK;
            }
            char detail[400];
            snprintf(detail, sizeof detail, "generic alert %.120s: %.200s", type,
                     it->data ? it->data : "");
            svc_utf8_sanitize(detail);
            if (esim_store_event_append(j->st, "generic_alert", d->udid, NULL, detail, NULL, 0,
                                        esim_now_ms(), NULL) != ESIM_OK)
                j->store_failed++;
        }
    }
    return ESIM_OK;
}

/* The message's store half, on a worker (or on the loop without a pool):
 * everything after the checks of omadm_handle, up to the answer. Touches
 * the job, its device's session and |st| only. */
static void omadm_job_run(store *st, pool_job *pj)
{
    omadm_job *j = (omadm_job *)pj;
    j->st = st;
    omadm_dev *d = j->d;
    const omadm_msg *m = &j->m;
    esim_error *e = &pj->e;
    esim_err rc;
    if (j->starts) {
        /* Who is this? Bound at the first session, checked at every one. */
        if ((rc = bind_identity(j, m, j->cert, e)) != ESIM_OK) {
            pj->rc = rc;
            return;
        }
        session_clear(d);
        d->in_session = true;
        snprintf(d->session_id, sizeof d->session_id, "%s", m->session_id);
        snprintf(d->cert, sizeof d->cert, "%s", j->cert);
        snprintf(d->server_uri, sizeof d->server_uri, "%s", m->target ? m->target : "");
        j->sessions++;
    }
    d->msgs++;
    d->bytes += j->len;
    d->touched_ms = j->now;
    d->last_msg_id = m->msg_id;
    if (d->msgs > j->svc->cfg.windows_max_messages ||
        d->bytes > j->svc->cfg.windows_max_session_bytes) {
        j->refused++;
        session_clear(d);
        j->limit = true;
        return;
    }

    /* The device's answers, each queue command in one store operation. */
    char done[OMADM_MAX_SENT][128];
    size_t n_done = 0;
    rc = ESIM_OK;
    for (size_t i = 0; i < m->n_cmds && rc == ESIM_OK; i++) {
        const omadm_cmd *c = &m->cmds[i];
        if (c->verb != OMADM_STATUS && c->verb != OMADM_RESULTS)
            continue;
        if (strcmp(c->cmd_ref, "0") == 0)
            continue; /* the device's Status of our SyncHdr */
        if (is_internal(c->cmd_ref)) {
            apply_internal(j, d, c);
            continue;
        }
        char u[128];
        uuid_of_ref(c->cmd_ref, u);
        bool seen = false;
        for (size_t k = 0; k < n_done && !seen; k++)
            seen = strcmp(done[k], u) == 0;
        if (seen || n_done == OMADM_MAX_SENT)
            continue;
        memcpy(done[n_done++], u, sizeof u);
        rc = apply_answer(j, d, m, u, e);
    }
    bool unenrolled = false;
    if (rc == ESIM_OK)
        rc = generic_alerts(j, d, m, &unenrolled, e);
    if (rc != ESIM_OK) {
        session_clear(d);
        pj->rc = rc;
        return;
    }

    if (d->ids_asked) { /* this message carried the Identifiers */
        d->ids_asked = false;
        d->n_pending_nodes = 0;
    }
    writer w = {.next_id = 1};
    w_printf(&w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                 "<SyncML xmlns=\"SYNCML:SYNCML1.2\"><SyncHdr><VerDTD>1.2</VerDTD>"
                 "<VerProto>DM/1.2</VerProto><SessionID>");
    w_text(&w, m->session_id);
    w_printf(&w, "</SessionID><MsgID>%lu</MsgID><Target><LocURI>", m->msg_id);
    w_text(&w, m->source);
    w_printf(&w, "</LocURI></Target><Source><LocURI>");
    w_text(&w, m->target && m->target[0] ? m->target : d->server_uri);
    w_printf(&w, "</LocURI></Source></SyncHdr><SyncBody>");
    char msg_ref[24];
    snprintf(msg_ref, sizeof msg_ref, "%lu", m->msg_id);
    w_status(&w, msg_ref, "0", "SyncHdr", 200);
    for (size_t i = 0; i < m->n_cmds; i++) {
        const omadm_cmd *c = &m->cmds[i];
        if (c->verb == OMADM_STATUS)
            continue;
        int code = c->verb == OMADM_OTHER ? 406 : 200;
        w_status(&w, msg_ref, c->cmd_id, c->name, code);
    }
    bool ending = unenrolled || has_alert(m, "1223");
    if (!ending && j->starts) {
        /* Every session: where WNS reaches the device now, and its eUICCs. */
        w_get(&w, OMADM_ID_CHANNEL, OMADM_CHANNEL_URI);
        w_get(&w, OMADM_ID_EUICCS, OMADM_EUICCS);
        d->asked_discovery = true;
    } else if (!ending && d->n_pending_nodes > 0 && !d->ids_asked) {
        for (size_t k = 0; k < d->n_pending_nodes; k++) {
            char id_ref[48], uri[160];
            snprintf(id_ref, sizeof id_ref, "%s%zu", OMADM_ID_EUICC, k);
            snprintf(uri, sizeof uri, "%s/%s/Identifier", OMADM_EUICCS, d->pending_nodes[k]);
            w_get(&w, id_ref, uri);
        }
        /* Their answers name the nodes by index: kept until they come. */
        d->ids_asked = true;
    } else if (!ending) {
        /* Every Get of the service was answered in this message (a device
         * answers all of a message in the next): the eUICC nodes are known. */
        rc = deliver(j, d, &w, e);
    }
    w_printf(&w, REPLY_END);
    if (rc != ESIM_OK || w.rc != ESIM_OK) {
        esim_buf_free(&w.b);
        session_clear(d);
        if (rc == ESIM_OK)
            rc = esim_fail(e, ESIM_ENOMEM, "out of memory");
        pj->rc = rc;
        return;
    }
    j->reply = w.b;
    j->ended = w.commands == 0;
    j->ending = ending;
}

/* What a job holds of its message; the job itself and its reply stay. */
static void omadm_job_trim(omadm_job *j)
{
    while (j->applied) {
        omadm_applied *a = j->applied;
        j->applied = a->next;
        webhooks_discard(a->hooks);
        esim_buf_free(&a->raw);
        hook_ctx_free(a->hook);
        free(a);
    }
    omadm_msg_free(&j->m);
    memset(&j->m, 0, sizeof j->m);
    free(j->query);
    j->query = NULL;
}

static void omadm_job_free(omadm_job *j)
{
    omadm_job_trim(j);
    esim_buf_free(&j->reply);
    free(j);
}

/* Back on the loop: the counters, each applied result's webhook and
 * hooks (after their commit, as svc_after_commit orders them), then the
 * answer. */
static void omadm_job_done(esim_service *svc, pool_job *pj)
{
    omadm_job *j = (omadm_job *)pj;
    omadm_dev *d = j->d;
    d->busy = false;
    svc->m.anomalies += j->anomalies;
    svc->m.windows_results[0] += j->results[0];
    svc->m.windows_results[1] += j->results[1];
    svc->m.windows_bad_channels += j->bad_channels;
    svc->m.windows_channels += j->channels;
    svc->m.commands_sent += j->commands_sent;
    svc->m.windows_commands_sent += j->commands_sent;
    svc->m.enqueued += j->enqueued;
    svc->m.store_errors += j->store_errors;
    svc->m.windows_sessions += j->sessions;
    svc->m.windows_refused += j->refused;
    for (unsigned i = 0; i < j->store_failed; i++)
        svc_store_failed(svc, NULL);
    /* A reply with no command to a message that carried results waits for
     * their batch and their hooks: the next command those queue for the
     * device goes in it (omadm_refill_answers), and the session goes on
     * instead of a push starting another. */
    bool hold = pj->rc == ESIM_OK && !j->limit && j->ended && !j->ending &&
                (svc->batch_open || svc->flush_ev);
    bool hooks = false;
    for (omadm_applied *a = j->applied; a; a = a->next)
        hooks |= a->hook != NULL;
    hold = hold && hooks;
    for (omadm_applied *a = j->applied; a; a = a->next) {
        if (a->written) {
            esim_msg m = {0};
            svc_after_commit_written(svc, &m, a->hooks, false, NULL, NULL);
            a->hooks = NULL;
            esim_msg_free(&m);
        } else {
            result_webhook(svc, d->udid, a->uuid, a->ok, &a->raw, j->query);
        }
        if (a->hook) {
            a->hook->held = hold;
            svc_after_commit_result(svc, hook_run, a->hook, hook_ctx_free);
            a->hook = NULL;
        }
    }
    if (pj->rc != ESIM_OK)
        reply_store_error(svc, j->req, pj->rc, &pj->e);
    else if (j->limit)
        reply_text(svc, j->req, 413,
                   "session limit reached (messages or bytes): start a new session");
    else {
        svc_reply *r = reply_syncml(svc, j->req, d, &j->reply);
        if (hold && svc_after_commit_refill(svc, d->udid, r, j)) {
            /* The held answer owns the session until it goes. */
            d->busy = true;
            omadm_job_trim(j);
            return;
        }
        if (j->ended) {
            /* Status only: the session is over. */
            session_clear(d);
            svc->m.windows_sessions_ended++;
        }
    }
    omadm_job_free(j);
}

/* ---- held answers ---------------------------------------------------------------------------
 * A held reply (omadm_job_done) is completed once its batch committed and
 * the result and results-done hooks ran: when they queued a command for
 * the device, deliver() puts it (and whatever else is queued) before the
 * reply's Final, as in any message of the session; the device answers it
 * in the same session. The job that made the reply does this too: with a
 * store pool on a worker (the answer stays held, send_batch passes it by,
 * and goes from refill_done), else on the loop in one batch for them all
 * (the answers go with the flush that committed their results, after its
 * sync). Nothing was queued: the reply goes as it is and the session ends. */

/* The refill is undone (its batch failed): the reply as it was. */
static void refill_undo(omadm_job *j)
{
    omadm_dev *d = j->d;
    for (size_t i = j->n_sent_before; i < d->n_sent; i++) {
        esim_buf_free(&d->sent[i].body);
        omadm_msg_free(&d->sent[i].cmds);
    }
    d->n_sent = j->n_sent_before;
    /* The buffer only grew: putting the end back needs no memory. */
    j->reply.len = j->reply_len_before - strlen(REPLY_END);
    esim_buf_append_str(&j->reply, REPLY_END);
    j->commands_sent = 0;
}

static void refill_run(store *st, pool_job *pj)
{
    omadm_job *j = (omadm_job *)pj;
    j->st = st;
    omadm_dev *d = j->d;
    j->n_sent_before = d->n_sent;
    j->reply_len_before = j->reply.len;
    writer w = {.b = j->reply, .next_id = 1};
    w.b.len -= strlen(REPLY_END);
    pj->rc = deliver(j, d, &w, &pj->e);
    w_printf(&w, REPLY_END);
    j->reply = w.b;
    if (w.rc != ESIM_OK)
        refill_undo(j);
}

/* Back on the loop: the counts, the reply's new body, the session. */
static void refill_finish(esim_service *svc, omadm_job *j)
{
    omadm_dev *d = j->d;
    svc_reply *r = j->held;
    svc->m.commands_sent += j->commands_sent;
    svc->m.windows_commands_sent += j->commands_sent;
    for (unsigned i = 0; i < j->store_failed; i++)
        svc_store_failed(svc, NULL);
    d->busy = false;
    if (j->commands_sent && r) {
        esim_buf_free(&r->body);
        r->body = j->reply;
        memset(&j->reply, 0, sizeof j->reply);
        esim_buf_free(&d->last_reply);
        esim_buf_append(&d->last_reply, r->body.data, r->body.len);
        return;
    }
    session_clear(d); /* Status only, as it was: the session is over */
    svc->m.windows_sessions_ended++;
}

static void refill_done(esim_service *svc, pool_job *pj)
{
    omadm_job *j = (omadm_job *)pj;
    svc_reply *r = j->held;
    if (!pj->ran)
        j->commands_sent = 0;
    else if (pj->rc == ESIM_ESTORE)
        svc_store_failed(svc, NULL);
    refill_finish(svc, j);
    svc_reply_send(svc, r);
    omadm_job_free(j);
}

void omadm_held_release(esim_service *svc, omadm_job *j)
{
    j->commands_sent = 0;
    j->store_failed = 0;
    j->held = NULL; /* its batch's fate answers it (send_batch) */
    refill_finish(svc, j);
    omadm_job_free(j);
}

void omadm_refill_answers(esim_service *svc, svc_deferred *list)
{
    omadm_job *todo = NULL;
    bool began = false, batched = false;
    for (svc_deferred *x = list; x; x = x->next) {
        omadm_job *j = x->omadm;
        if (!j)
            continue;
        svc_reply *r = x->refill;
        x->omadm = NULL;
        x->refill = NULL; /* not mdm.c's to refill */
        j->held = r;
        j->commands_sent = 0;
        j->store_failed = 0;
        if (!x->refill_wanted || !r || !evhttp_request_get_connection(r->req)) {
            /* Nothing new for it (or it hung up): the reply as it is. */
            refill_finish(svc, j);
            omadm_job_free(j);
            continue;
        }
        j->job.run = refill_run;
        j->job.done = refill_done;
        if (pool_on(svc)) {
            r->held = true;
            pool_submit(svc, &j->job);
            continue;
        }
        if (!began) { /* one commit for them all, when the back end batches */
            began = true;
            batched = (esim_store_features(svc->st) & ESIM_STORE_FEATURE_BATCH) &&
                      esim_store_batch_begin(svc->st, NULL) == ESIM_OK;
        }
        j->job.rc = ESIM_OK;
        refill_run(svc->st, &j->job);
        j->next_inline = todo;
        todo = j;
    }
    if (!began)
        return;
    bool ok = !batched || esim_store_batch_commit(svc->st, NULL) == ESIM_OK;
    if (!ok)
        svc_store_failed(svc, NULL);
    while (todo) {
        omadm_job *j = todo;
        todo = j->next_inline;
        if (!ok && j->commands_sent) {
            /* Undone: the commands are queued still; the reply goes without
             * them and a push brings the device back for them. */
            refill_undo(j);
            push_later(svc, j->d->udid);
        } else if (j->job.rc == ESIM_ESTORE) {
            svc_store_failed(svc, NULL);
        }
        refill_finish(svc, j);
        omadm_job_free(j);
    }
}

void omadm_handle(esim_service *svc, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        reply_text(svc, req, 405, "Windows devices use POST on this endpoint");
        return;
    }
    bool wbxml = false;
    if (!content_type_ok(req, &wbxml)) {
        svc->m.windows_refused++;
        reply_text(svc, req, 415,
                   wbxml ? "WBXML is not supported: send SyncML as application/vnd.syncml.dm+xml"
                         : "expected Content-Type application/vnd.syncml.dm+xml");
        return;
    }
    size_t len = 0;
    const unsigned char *body = http_body(req, &len);
    if (len > svc->cfg.max_body) {
        svc->m.too_big++;
        reply_text(svc, req, 413, "message too large");
        return;
    }
    /* Identity first: the TLS client certificate, chained to the device CA. */
    auth_identity id;
    esim_error e = {{0}};
    esim_err rc = auth_tls_identity(svc, req, &id, &e);
    if (rc != ESIM_OK) {
        svc->m.auth_refused++;
        reply_text(svc, req, rc == ESIM_EAUTH ? 401 : 403, e.msg);
        return;
    }
    omadm_msg m;
    rc = omadm_parse(body, len, &m, &e);
    if (rc != ESIM_OK) {
        svc->m.malformed++;
        svc->m.windows_refused++;
        reply_text(svc, req, rc == ESIM_ETOOBIG ? 413 : 400, e.msg);
        return;
    }
    if (!rate_allow(svc, m.source, esim_now_ms())) {
        svc->m.rate_limited++;
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        reply_text(svc, req, 429, "too many requests from this device; slow down");
        omadm_msg_free(&m);
        return;
    }
    omadm_dev *d = dev_find(svc, m.source, true);
    if (!d) {
        reply_text(svc, req, 503, "too many Windows sessions; try again later");
        omadm_msg_free(&m);
        return;
    }
    if (d->busy) {
        /* Its previous message is still with the store (a client that did
         * not wait for the answer): it asks again, as after a lost answer. */
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        reply_text(svc, req, 503, "the previous message of this session is in progress");
        omadm_msg_free(&m);
        return;
    }
    bool starts = m.msg_id == 1;
    if (starts) {
        if (!has_alert(&m, "1201") && !has_alert(&m, "1200")) {
            svc->m.malformed++;
            reply_text(svc, req, 400,
                       "a session starts with MsgID 1 and an Alert 1201 (or 1200 after a push)");
            omadm_msg_free(&m);
            return;
        }
    } else if (!d->in_session || strcmp(d->session_id, m.session_id) != 0) {
        svc->m.malformed++;
        reply_text(svc, req, 400,
                   "no such session: a session starts with MsgID 1 and an Alert 1201");
        omadm_msg_free(&m);
        return;
    } else if (strcmp(d->cert, id.cert_sha256) != 0) {
        svc->m.auth_refused++;
        reply_text(svc, req, 403, "this session belongs to another client certificate");
        omadm_msg_free(&m);
        return;
    } else if (m.msg_id == d->last_msg_id && d->last_reply.len) {
        /* The same message again (the answer was lost): the same answer. */
        http_reply(svc, req, M_ROUTE_MDM, 200, "application/vnd.syncml.dm+xml", d->last_reply.data,
                   d->last_reply.len);
        omadm_msg_free(&m);
        return;
    } else if (m.msg_id != d->last_msg_id + 1) {
        svc->m.malformed++;
        esim_fail(&e, ESIM_EINVAL, "MsgID %lu out of order: expected %lu", m.msg_id,
                  d->last_msg_id + 1);
        reply_text(svc, req, 400, e.msg);
        omadm_msg_free(&m);
        return;
    }
    /* The rest is the store's: a job (omadm_job_run, then omadm_job_done). */
    omadm_job *j = calloc(1, sizeof *j);
    const struct evhttp_uri *req_uri = evhttp_request_get_evhttp_uri(req);
    const char *query = req_uri ? evhttp_uri_get_query(req_uri) : NULL;
    if (!j || (query && !(j->query = strdup(query)))) {
        free(j);
        reply_text(svc, req, 503, "out of memory");
        omadm_msg_free(&m);
        return;
    }
    j->job.run = omadm_job_run;
    j->job.done = omadm_job_done;
    j->svc = svc;
    j->req = req;
    j->d = d;
    j->m = m;
    snprintf(j->cert, sizeof j->cert, "%s", id.cert_sha256);
    j->len = len;
    j->now = esim_now_ms();
    j->starts = starts;
    j->applied_tail = &j->applied;
    d->busy = true;
    pool_run(svc, &j->job);
}

/* ---- queueing Windows commands ----------------------------------------------------------- */

/* esim_service_enqueue_syncml_on's work, on |st| (the service's,
 * or a pool worker's): checks and queues, nothing else. |enqueue_failed|:
 * the store failed to queue it (a store failure to count). */
static esim_err syncml_enqueue_on(const esim_service *svc, store *st, const char *uuid,
                                  const char *request_type, const char *syncml, size_t len,
                                  const char *const *udids, size_t n, const esim_enqueue_opts *opts,
                                  char uuid_out[128], bool *enqueue_failed, esim_error *err)
{
    if (!syncml || !request_type || !*request_type || !svc_utf8_valid(request_type) ||
        strlen(request_type) >= 64)
        return esim_fail(err, ESIM_EINVAL, "a Windows command needs SyncML and a request type");
    if (len > svc->cfg.max_body)
        return esim_fail(err, ESIM_ETOOBIG, "the SyncML command is over %zu bytes",
                         svc->cfg.max_body);
    char fresh[ESIM_UUID_LEN + 1];
    if (!uuid) {
        esim_uuid_new(fresh);
        uuid = fresh;
    }
    if (!*uuid || strlen(uuid) >= 100 || strchr(uuid, '.') || !svc_utf8_valid(uuid))
        return esim_fail(err, ESIM_EINVAL, "a command UUID has no '.' and at most 99 bytes");
    omadm_msg check = {0};
    esim_err rc = omadm_parse_commands(syncml, len, uuid, &check, err);
    omadm_msg_free(&check);
    if (rc != ESIM_OK)
        return rc;
    /* The platform only: the push facts' narrow read, not the whole row. */
    for (size_t i = 0; i < n; i++) {
        store_push_target d;
        rc = esim_store_push_target(st, udids[i], &d, NULL);
        if (rc == ESIM_OK && strcmp(d.platform, "windows") != 0)
            return esim_fail(err, ESIM_EINVAL,
                             "device %s is an Apple device: SyncML commands go to Windows devices",
                             udids[i]);
        if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
            return esim_fail(err, rc, "the store failed");
    }
    store_command_in in = {
        .uuid = uuid,
        .request_type = request_type,
        .body = syncml,
        .body_len = len,
        .priority = opts->priority,
        .expires_at = opts->expires_at,
    };
    rc = esim_store_command_enqueue(st, &in, udids, n, esim_now_ms(), err);
    if (rc != ESIM_OK) {
        *enqueue_failed = rc == ESIM_ESTORE;
        return rc;
    }
    if (uuid_out)
        snprintf(uuid_out, 128, "%s", uuid);
    return ESIM_OK;
}

esim_err svc_syncml_enqueue_on(const esim_service *svc, store *st, const char *uuid,
                               const char *request_type, const char *syncml, size_t len,
                               const char *const *udids, size_t n, const esim_enqueue_opts *opts,
                               char uuid_out[128], bool *enqueue_failed, esim_error *err)
{
    return syncml_enqueue_on(svc, st, uuid, request_type, syncml, len, udids, n, opts, uuid_out,
                             enqueue_failed, err);
}

esim_err esim_service_enqueue_syncml_on(const esim_service *svc, store *st, const char *uuid,
                                        const char *request_type, const char *syncml, size_t len,
                                        const char *const *udids, size_t n,
                                        const esim_enqueue_opts *opts, esim_error *err)
{
    esim_enqueue_opts none = {0};
    if (!svc || !st)
        return esim_fail(err, ESIM_EINVAL, "a Windows command needs SyncML and a request type");
    bool failed = false;
    return syncml_enqueue_on(svc, st, uuid, request_type, syncml, len, udids, n,
                             opts ? opts : &none, NULL, &failed, err);
}
