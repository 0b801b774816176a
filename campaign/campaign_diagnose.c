/*
 * campaign_diagnose.c — `esim-mdm diagnose UDID`: the checks a support
 * engineer walks through (enrolment and token, the last push and APNs's
 * answer, check-ins since, the commands and their answers in words, the
 * restrictions in force, the expected eSIM and its verification), ending in
 * one plain-English conclusion and the next action.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "campaign/campaign_internal.h"
#include "campaign/platform.h"

typedef struct {
    json_t *checks;
    const char *kind;
    char conclusion[600];
    char next[400];
} diag;

static void fmt_time(int64_t ms, char out[40])
{
    if (ms <= 0) {
        snprintf(out, 40, "never");
        return;
    }
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(out, 40, "%04d-%02d-%02d %02d:%02d:%02d UTC", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void check(diag *d, const char *name, int ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ok: 1 yes, 0 no, -1 not applicable / unknown. */
static void check(diag *d, const char *name, int ok, const char *fmt, ...)
{
    char buf[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    json_array_append_new(d->checks,
                          json_pack("{s:s, s:o, s:s}", "name", name, "ok",
                                    ok < 0 ? json_null() : json_boolean(ok), "detail", buf));
}

static void conclude(diag *d, const char *kind, const char *next, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void conclude(diag *d, const char *kind, const char *next, const char *fmt, ...)
{
    if (d->kind)
        return; /* the first, most basic finding wins */
    d->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->conclusion, sizeof d->conclusion, fmt, ap);
    va_end(ap);
    snprintf(d->next, sizeof d->next, "%s", next);
}

/* The first error of a stored chain, in words: "36003 (cellular stack busy)". */
static void chain_words(const char *json, char *out, size_t len, int64_t *code)
{
    out[0] = '\0';
    *code = 0;
    json_t *arr = json ? json_loads(json, 0, NULL) : NULL;
    json_t *first = json_array_get(arr, 0);
    if (first) {
        *code = json_integer_value(json_object_get(first, "error_code"));
        const char *text = json_string_value(json_object_get(first, "us_english_description"));
        if (!text || !*text)
            text = json_string_value(json_object_get(first, "localized_description"));
        const char *dom = json_string_value(json_object_get(first, "error_domain"));
        snprintf(out, len, "error %lld%s%s%s: %s", (long long)*code, dom ? " (" : "",
                 dom ? dom : "", dom ? ")" : "", text && *text ? text : "no description");
    }
    json_decref(arr);
}

/* The number a Get of the node ending in |leaf| read in this answer (its
 * item answered 200 with data), with that item; -1 when it read none. */
static long read_node(json_t *items, const char *leaf, json_t **item)
{
    size_t ll = strlen(leaf), i;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        const char *t = json_string_value(json_object_get(it, "target"));
        const char *v = json_string_value(json_object_get(it, "data"));
        size_t tl = t ? strlen(t) : 0;
        if (tl < ll || strcmp(t + tl - ll, leaf) != 0 ||
            json_integer_value(json_object_get(it, "code")) != 200 || !v || !*v)
            continue;
        char *e = NULL;
        long n = strtol(v, &e, 10);
        if (*e || n < 0)
            continue;
        *item = it;
        return n;
    }
    return -1;
}

/* snprintf into |out|, cut to |len| (words may be cut: never an error). */
static void put_words(char *out, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void put_words(char *out, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, len, fmt, ap);
    va_end(ap);
}

static const char *item_text(json_t *it, const char *key, const char *none)
{
    const char *v = json_string_value(json_object_get(it, key));
    return v ? v : none;
}

/* An item's node under its eUICC, "…/DownloadServers/FQDN/DiscoveryState"
 * (the EID is the diagnosis's expected_eid), or the whole LocURI. */
static const char *node_under_euicc(json_t *it, char *buf, size_t len)
{
    const char *t = item_text(it, "target", "");
    const char *e = strstr(t, "eUICCs/");
    const char *rest = e ? strchr(e + 7, '/') : NULL;
    if (!rest)
        return t;
    put_words(buf, len, "…%s", rest);
    return buf;
}

/* A Windows answer in words: the first item that failed ("Add
 * …/MatchingID answered 405, HRESULT 0x86000002"), or "" when every item
 * succeeded. A verification's Gets say why a node is missing: when the
 * same answer read DiscoveryState 4 (discovery at the SM-DP+ failed, so
 * no profile node: its State and ErrorDetail answer 404) or State 4, as
 * the campaign's verification reads them (campaign_windows_verdict_of), the
 * words lead with that reading (and the ErrorDetail read with it), then
 * name the item that failed; any other DiscoveryState or ErrorDetail read
 * follows the failed item. */
static void syncml_words(json_t *items, char *out, size_t len, int64_t *code)
{
    out[0] = '\0';
    size_t i;
    json_t *it, *bad = NULL;
    json_array_foreach(items, i, it)
    {
        json_int_t c = json_integer_value(json_object_get(it, "code"));
        if (c < 200 || c > 299) {
            bad = it;
            break;
        }
    }
    if (!bad)
        return;
    json_int_t c = json_integer_value(json_object_get(bad, "code"));
    const char *h = json_string_value(json_object_get(bad, "hresult"));
    json_t *ds_it = NULL, *st_it = NULL, *ed_it = NULL;
    long ds = read_node(items, "/DiscoveryState", &ds_it);
    long st = read_node(items, "/State", &st_it);
    long ed = read_node(items, "/ErrorDetail", &ed_it);
    /* Led by a reading (the campaign's own verdict on it), its nodes are
     * named under the eUICC: the words stay short enough for the commands
     * check and the conclusion. */
    campaign_windows_verdict v = campaign_windows_verdict_of(st, ds);
    bool reading = v == CAMPAIGN_WINDOWS_PROFILE_ERROR || v == CAMPAIGN_WINDOWS_DISCOVERY_FAILED;
    char failed[300], bad_node[200];
    put_words(failed, sizeof failed, "%s %s answered %lld%s%s%s", item_text(bad, "cmd", "?"),
              reading ? node_under_euicc(bad, bad_node, sizeof bad_node)
                      : item_text(bad, "target", ""),
              (long long)c,
              c == 405   ? " (not allowed on this node)"
              : c == 404 ? " (no such node)"
                         : "",
              h ? ", HRESULT " : "", h ? h : "");
    *code = c;
    char detail[80] = "";
    if (ed >= 0)
        put_words(detail, sizeof detail, "ErrorDetail %ld %s", ed,
                  esim_windows_error_detail_name(ed));
    static const char *const dstates[] = {"?", "Requested", "Executing", "Completed", "Failed"};
    char node[200];
    if (v == CAMPAIGN_WINDOWS_PROFILE_ERROR) {
        put_words(out, len, "State 4 (Error)%s%s, read by Get %s; also %s", detail[0] ? ", " : "",
                  detail, node_under_euicc(st_it, node, sizeof node), failed);
        *code = ed >= 0 ? ed : 4;
    } else if (v == CAMPAIGN_WINDOWS_DISCOVERY_FAILED) {
        put_words(out, len,
                  "DiscoveryState 4 (Failed): discovery at the SM-DP+ failed, nothing released "
                  "for this EID or the server unreachable%s%s, read by Get %s; so %s%s",
                  detail[0] ? ", " : "", detail, node_under_euicc(ds_it, node, sizeof node), failed,
                  c == 404 ? ": discovery made no profile" : "");
        *code = 4;
    } else {
        char dsw[48] = "";
        if (ds >= 0)
            put_words(dsw, sizeof dsw, "; DiscoveryState %ld (%s)", ds, dstates[ds < 5 ? ds : 0]);
        put_words(out, len, "%s%s%s%s", failed, dsw, detail[0] ? "; " : "", detail);
    }
}

/* The newest "verify" event of the device (what became of its last eSIM
 * operation), or false. */
static bool last_verify(store *st, const char *udid, store_event *out)
{
    static const char *const kinds[] = {"verify"};
    return esim_store_event_latest(st, udid, kinds, 1, out, NULL) == ESIM_OK;
}

/* What a Windows failure means and what to do about it. */
static void windows_failure(diag *d, const char *why)
{
    if (strstr(why, "ProfileNotReleasedByOperator") || strstr(why, "ErrorDetail 12"))
        conclude(d, "profile_not_released",
                 "Ask the operator to release the profile for this EID on the SM-DP+, then run "
                 "the campaign again for this PC.",
                 "The SM-DP+ has no profile released for this PC: the operator did not release "
                 "it (%s).",
                 why);
    else if (strstr(why, "InvalidMatchingId") || strstr(why, "ErrorDetail 6") ||
             strstr(why, "MatchingID"))
        conclude(d, "invalid_matching_id",
                 "Check the activation code for this EID (esim-mdm import activation-codes) and "
                 "queue the profile again.",
                 "The SM-DP+ refused the matching ID the PC presented (%s).", why);
    /* DiscoveryState 4 first: its words also name an unreachable server as
     * one possible cause, and the order is what to look at first. */
    else if (strstr(why, "DiscoveryState 4"))
        conclude(d, "nothing_released",
                 "Check the SM-DP+ order for this EID (released? linked to this EID?), then run "
                 "the campaign again for this PC.",
                 "Discovery at the SM-DP+ found nothing for this PC (%s).", why);
    else if (strstr(why, "RemoteServerUnreachable") || strstr(why, "ErrorDetail 14") ||
             strstr(why, "unreachable"))
        conclude(d, "smdp_unreachable",
                 "Check that the PC can reach the SM-DP+ (network, proxy, firewall, DNS), then "
                 "run the campaign again for it.",
                 "The PC could not reach the SM-DP+ (%s).", why);
    else if (strstr(why, "405"))
        conclude(d, "csp_refused",
                 "The command writes a node the eUICCs CSP does not let it write: check the "
                 "operation (a read-only node, or a setting the OS version lacks).",
                 "The PC refused a write to its eUICC (%s).", why);
}

static const char *push_words(uint8_t s)
{
    static const char *const w[] = {
        "none was sent",
        "handed to the APNs client",
        "no APNs is configured: the device gets it at its next check-in",
        "not sent: the device has no push token",
        "not sent: APNs said the token is dead",
        "the APNs client refused it"};
    return s < 6 ? w[s] : "unknown";
}

/* Returns how many of the campaign's keys this device ignores (its iOS or
 * supervision): something to know, not a failure, as nothing can fix it
 * from here. */
static size_t check_restrictions(diag *d, campaigns *cs, const campaign *c, const campaign_dev *cd,
                                 const store_device_facts *f, const store_device *dev)
{
    (void)cs;
    const campaign_spec *spec = c ? campaign_get_spec(c) : NULL;
    bool installed =
        spec && spec->steps[CAMPAIGN_STEP_PROFILE] &&
        (cd->step > CAMPAIGN_STEP_PROFILE || cd->state == CDEV_VERIFIED || cd->state == CDEV_DONE);
    if (!installed) {
        check(d, "restrictions", -1, "no eSIM restrictions profile was installed by a campaign");
        return 0;
    }
    const char *os = f->os_version[0] ? f->os_version : dev->os_version;
    esim_ignored_key ig[4];
    size_t n = esim_policy_ignored_keys(&spec->policy, os[0] ? os : NULL, f->supervised != 0, ig);
    esim_policy eff = esim_policy_effective(&spec->policy, os[0] ? os : NULL, f->supervised != 0);
    /* Each key in force, with what it does to the person holding the phone. */
    const char *words[3];
    size_t nw = 0;
    if (eff.allow_esim_modification == ESIM_TRI_FALSE)
        words[nw++] = "allowESIMModification=false (the user cannot delete or change the eSIM)";
    if (eff.force_preserve_esim_on_erase == ESIM_TRI_TRUE)
        words[nw++] = "forcePreserveESIMOnErase=true (the eSIM survives Erase All Content and "
                      "passcode wipes, not a Find My erase)";
    if (eff.allow_esim_outgoing_transfers == ESIM_TRI_FALSE)
        words[nw++] = "allowESIMOutgoingTransfers=false (Quick Transfer is blocked)";
    char inforce[400] = "";
    size_t o = 0;
    for (size_t i = 0; i < nw && o < sizeof inforce; i++)
        o += (size_t)snprintf(inforce + o, sizeof inforce - o, "%s%s", i ? "; " : "", words[i]);
    char ignored[400] = "";
    size_t p = 0;
    for (size_t i = 0; i < n && p < sizeof ignored; i++)
        p += (size_t)snprintf(ignored + p, sizeof ignored - p, "%s%s %s", i ? "; " : "", ig[i].key,
                              ig[i].reason);
    check(d, "restrictions", n == 0 ? 1 : -1, "in force: %s%s%s", o ? inforce : "none",
          n ? ". Ignored by this device: " : "", n ? ignored : "");
    if (f->supervised < 0)
        check(d, "supervision", -1, "unknown: no DeviceInformation answer has said yet");
    return n;
}

/* Whether a stored error chain holds NSURLErrorDomain -1003
 * (NSURLErrorCannotFindHost): the SM-DP+'s host name did not resolve. */
static bool chain_says_dns(const char *json)
{
    json_t *arr = json ? json_loads(json, 0, NULL) : NULL;
    bool dns = false;
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e)
    {
        const char *dom = json_string_value(json_object_get(e, "error_domain"));
        if (dom && strcmp(dom, "NSURLErrorDomain") == 0 &&
            json_integer_value(json_object_get(e, "error_code")) == -1003)
            dns = true;
    }
    json_decref(arr);
    return dns;
}

/* The device's latest "pushed" or "push_failed" ledger event. */
static bool last_push_event(store *st, const char *udid, store_event *out)
{
    static const char *const kinds[] = {"pushed", "push_failed"};
    return esim_store_event_latest(st, udid, kinds, 2, out, NULL) == ESIM_OK;
}

/* What the diagnosis reads of the store, read in one go: on a store pool
 * worker with a pool (diagnose_run), the engines' memory then read on the
 * loop (diagnose_build). */
typedef struct {
    char udid[65];
    esim_err rc; /* of the device's record */
    esim_error err;
    store_device dev;
    esim_err irc; /* of the IoT record (an IoT device only) */
    store_iot_device idev;
    bool have_ev; /* the latest "pushed" or "push_failed" event */
    store_event last_push_ev;
    esim_err qrc; /* of the queue */
    store_queue_entry *q;
    size_t nq;
    store_device_facts f;
    bool have_ve; /* the latest "verify" event (a Windows PC only) */
    store_event ve;
} diag_read;

static void diagnose_read(store *st, diag_read *in)
{
    const char *udid = in->udid;
    esim_err rc = esim_store_device_get(st, udid, &in->dev, &in->err);
    if (rc != ESIM_OK) {
        in->rc = rc == ESIM_ENOTFOUND
                     ? esim_fail(&in->err, ESIM_ENOTFOUND,
                                 "no device %s: it never enrolled with this service", udid)
                     : rc;
        return;
    }
    in->irc = ESIM_ENOTFOUND;
    if (strcmp(in->dev.platform, "iot") == 0)
        in->irc = esim_store_iot_get(st, udid, &in->idev, NULL);
    in->have_ev = last_push_event(st, udid, &in->last_push_ev);
    in->qrc = esim_store_device_queue(st, udid, true, &in->q, &in->nq, NULL);
    esim_store_facts_get(st, udid, &in->f, NULL);
    in->have_ve = strcmp(in->dev.platform, "windows") == 0 && last_verify(st, udid, &in->ve);
}

static void diag_read_free(diag_read *in)
{
    if (in->irc == ESIM_OK)
        esim_buf_free(&in->idev.euicc_cert);
    if (in->qrc == ESIM_OK)
        esim_store_queue_entries_free(in->q, in->nq);
    in->q = NULL;
    in->nq = 0;
}

/* The diagnosis of |in| (read from the store) and of what the engines hold
 * of the device. */
static esim_err diagnose_build(campaigns *cs, const diag_read *in, json_t **out, esim_error *err)
{
    const char *udid = in->udid;
    if (in->rc != ESIM_OK) {
        if (err)
            *err = in->err;
        return in->rc;
    }
    const store_device dev = in->dev;
    bool windows = strcmp(dev.platform, "windows") == 0;
    bool iot = strcmp(dev.platform, "iot") == 0;
    diag d = {.checks = json_array()};
    if (!d.checks)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    char t1[40], t2[40];
    int64_t now = esim_now_ms();

    /* 1. enrolment and token */
    fmt_time(dev.enrolled_at, t1);
    fmt_time(dev.checked_out_at, t2);
    check(&d, "enrolled", dev.enrolled, dev.enrolled ? "enrolled since %s" : "checked out at %s",
          dev.enrolled ? t1 : t2);
    if (!dev.enrolled)
        conclude(&d, "not_enrolled", "Re-enrol the device; nothing can reach it until then.",
                 "The device is not enrolled: it checked out at %s.", t2);
    fmt_time(dev.token_updated_at, t1);
    if (windows) {
        /* A PC's push address is its WNS channel, read every session. */
        check(&d, "wns_channel", dev.push_state == STORE_PUSH_VALID, "%s (last reported %s)",
              dev.push_state == STORE_PUSH_VALID ? "valid"
              : dev.push_state == STORE_PUSH_DEAD
                  ? "expired: WNS answered 410, a new one comes with the PC's next session"
                  : "none: the PC never reported a WNS channel (DMClient push not set up)",
              t1);
        if (dev.push_state == STORE_PUSH_DEAD)
            conclude(&d, "channel_expired",
                     "Wait for the PC's next scheduled session (it reports a fresh channel "
                     "then), or start a sync on the PC.",
                     "WNS says the PC's push channel expired, so pushes cannot wake it until it "
                     "reports a new one.");
        else if (dev.push_state == STORE_PUSH_NONE && dev.enrolled)
            conclude(&d, "no_channel",
                     "Check the PC's DMClient push settings; until then it gets its commands at "
                     "its polling schedule.",
                     "The PC never reported a WNS channel, so the service cannot wake it.");
    }
    /* Any non-empty token is taken at TokenUpdate (test clients send short
     * placeholders): APNs judges it when a push goes out. */
    size_t token_bytes = strlen(dev.push_token) / 2;
    char odd_token[160] = "";
    if (dev.push_state == STORE_PUSH_VALID && token_bytes != 32)
        snprintf(odd_token, sizeof odd_token,
                 "; the token is %zu bytes, not an APNs device token's 32: APNs judges it at "
                 "push time (BadDeviceToken if it is a placeholder)",
                 token_bytes);
    if (iot) {
        /* An IoT eUICC is not pushed: its IPA polls the eIM. */
        const store_iot_device idev = in->idev;
        esim_err irc = in->irc;
        bool ready = irc == ESIM_OK && strcmp(idev.state, "ready") == 0;
        fmt_time(irc == ESIM_OK ? idev.last_poll_ms : 0, t1);
        check(&d, "eim_registration", ready, "%s",
              irc != ESIM_OK ? "not known to the eIM"
              : ready        ? "registered, eUICC certificate verified"
                             : "registered, waiting for its eUICC certificates");
        check(&d, "eim_poll", irc == ESIM_OK && idev.last_poll_ms > 0, "last poll %s", t1);
        if (irc == ESIM_OK && idev.last_poll_ms == 0)
            conclude(&d, "never_polled",
                     "Check that the device's IPA has this eIM's address and is online; it "
                     "gets its packages when it polls.",
                     "The device's IPA never polled the eIM.");
        else if (irc == ESIM_OK && idev.last_error[0])
            check(&d, "eim_last_error", 0, "%s", idev.last_error);
    }
    if (!windows && !iot)
        check(&d, "push_token", dev.push_state == STORE_PUSH_VALID, "%s (last TokenUpdate %s)%s",
              dev.push_state == STORE_PUSH_VALID  ? "valid"
              : dev.push_state == STORE_PUSH_DEAD ? "dead: APNs refused it"
                                                  : "none: the device never sent TokenUpdate",
              t1, odd_token);
    if (windows || iot) {
    } else if (dev.push_state == STORE_PUSH_DEAD)
        conclude(&d, "token_dead",
                 "Wait for the device to check in on its own (it then sends a new token), or "
                 "re-enrol it.",
                 "APNs says the device's push token is no longer valid, so pushes cannot wake it.");
    else if (dev.push_state == STORE_PUSH_NONE && dev.enrolled)
        conclude(&d, "no_token", "Have the device finish enrolment (it must send TokenUpdate).",
                 "The device never sent a push token, so the service cannot wake it.");

    /* 2. the campaign record: last push, check-in since */
    long idx = -1;
    campaign *c = campaigns_latest_for_device(cs, udid, &idx);
    const campaign_dev *cd = c ? campaign_device_at(c, (size_t)idx) : NULL;
    fmt_time(dev.last_seen_at, t2);
    /* APNs's own answer is in the ledger: "pushed" when it accepted the
     * push, "push_failed" with the outcome and reason otherwise. */
    const store_event last_push_ev = in->last_push_ev;
    bool have_ev = in->have_ev;
    bool apns_refused = have_ev && strcmp(last_push_ev.kind, "push_failed") == 0;
    char apns_words[600] = "";
    if (have_ev) {
        fmt_time(last_push_ev.at, t1);
        snprintf(apns_words, sizeof apns_words, "; %s's last answer (%s): %.400s",
                 windows ? "WNS" : "APNs", t1, apns_refused ? last_push_ev.detail : "accepted");
    }
    if (cd && cd->last_push_ms) {
        fmt_time(cd->last_push_ms, t1);
        check(&d, "last_push", (cd->push_state == 1 || cd->push_state == 2) && !apns_refused,
              "campaign %s pushed it at %s (%u push%s for the current step): %s%s", campaign_id(c),
              t1, (unsigned)cd->pushes, cd->pushes == 1 ? "" : "es", push_words(cd->push_state),
              apns_words);
        check(&d, "checked_in_after_push", dev.last_seen_at >= cd->last_push_ms, "last seen %s",
              t2);
    } else {
        check(&d, "last_push", have_ev ? !apns_refused : -1, "%s%s",
              have_ev ? "no campaign push recorded" : "no push recorded for this device",
              apns_words);
        check(&d, "checked_in", dev.last_seen_at > 0, "last seen %s", t2);
    }
    if (apns_refused && dev.enrolled && dev.push_state == STORE_PUSH_VALID &&
        (!cd || !campaign_dev_state_final((campaign_dev_state)cd->state)))
        conclude(&d, "push_failed",
                 "Check the push certificate and the connection to APNs (esim-mdm push can test "
                 "them); the service pushes again on its own.",
                 "APNs did not take the last push (%.400s), so the device was not woken.",
                 last_push_ev.detail);

    /* 3. the commands and their answers */
    const store_queue_entry *q = in->q;
    size_t nq = in->nq;
    json_t *cmds = json_array();
    char last_error[400] = "";
    int64_t last_code = 0, last_error_at = 0;
    bool last_error_dns = false;
    /* The store gives the waiting entries first (delivery order), then the
     * final ones newest first; the list shows them oldest first, so the
     * newest is last, with the ones still waiting after them. */
    json_t *waiting = json_array();
    if (in->qrc == ESIM_OK) {
        for (size_t i = 0; i < nq; i++) {
            char words[400];
            int64_t code = 0;
            json_t *win = q[i].error_chain_json ? json_loads(q[i].error_chain_json, 0, NULL) : NULL;
            if (json_is_object(win))
                syncml_words(json_object_get(win, "syncml"), words, sizeof words, &code);
            else
                chain_words(q[i].error_chain_json, words, sizeof words, &code);
            json_decref(win);
            json_t *e = json_pack(
                "{s:s, s:s, s:s, s:i, s:i}", "command_uuid", q[i].command_uuid, "request_type",
                q[i].request_type, "state",
                esim_store_qstate_name(q[i].state) ? esim_store_qstate_name(q[i].state) : "?",
                "attempts", q[i].attempts, "not_now", q[i].not_now_count);
            if (words[0]) {
                json_object_set_new(e, "error", json_string(words));
                if (q[i].answered_at >= 0 && !last_error[0]) {
                    snprintf(last_error, sizeof last_error, "%.63s answered %.320s",
                             q[i].request_type, words);
                    last_code = code;
                    last_error_at = q[i].answered_at;
                    last_error_dns = chain_says_dns(q[i].error_chain_json);
                }
            }
            bool final = q[i].state == STORE_Q_ACKNOWLEDGED || q[i].state == STORE_Q_ERROR ||
                         q[i].state == STORE_Q_FORMAT_ERROR || q[i].state == STORE_Q_EXPIRED ||
                         q[i].state == STORE_Q_CANCELED;
            if (final)
                json_array_insert_new(cmds, 0, e); /* newest first: reversed */
            else
                json_array_append_new(waiting, e);
        }
    } else
        nq = 0;
    json_array_extend(cmds, waiting);
    json_decref(waiting);
    /* What the device reported since: an error older than its verified
     * eSIM belongs to an attempt that was overtaken (an old campaign). */
    const store_device_facts f = in->f;
    const char *eid = cd && cd->eid[0] ? cd->eid : "";
    bool verified_since_error = last_error[0] && f.verified_ms && eid[0] &&
                                strcmp(f.eid, eid) == 0 && f.verified_ms >= last_error_at;
    if (verified_since_error) {
        fmt_time(f.verified_ms, t1);
        check(&d, "commands", 1,
              "%zu command%s on record; no error since the eSIM was verified (%s; an earlier "
              "attempt's: %s)",
              nq, nq == 1 ? "" : "s", t1, last_error);
        last_error[0] = '\0';
        last_code = 0;
        last_error_dns = false;
    } else {
        check(&d, "commands", last_error[0] == '\0', "%zu command%s on record%s%s", nq,
              nq == 1 ? "" : "s", last_error[0] ? "; latest error: " : "", last_error);
    }

    /* Windows: what verification found of the last eSIM operation. */
    const store_event ve = in->ve;
    if (windows && in->have_ve) {
        fmt_time(ve.at, t1);
        bool good = strncmp(ve.detail, "done", 4) == 0;
        bool bad = strncmp(ve.detail, "failed", 6) == 0 || strncmp(ve.detail, "timeout", 7) == 0;
        check(&d, "verification",
              good  ? 1
              : bad ? 0
                    : -1,
              "operation %s: %s (%s)", ve.command_uuid, ve.detail, t1);
        if (bad && (!cd || campaign_dev_state_final((campaign_dev_state)cd->state)))
            windows_failure(&d, ve.detail);
    }
    /* The campaign's own reason first: the verification's words in short
     * (the commands check has the answer's whole reading). */
    if (windows && cd && cd->state == CDEV_FAILED && cd->reason)
        windows_failure(&d, cd->reason);
    if (windows && last_error[0] && (!cd || cd->state == CDEV_FAILED))
        windows_failure(&d, last_error);
    if (cd && cd->not_now)
        check(&d, "not_now", -1,
              "the device answered NotNow %u time%s during campaign %s (locked or busy); the "
              "service waited and pushed again",
              (unsigned)cd->not_now, cd->not_now == 1 ? "" : "s", campaign_id(c));

    /* 4. restrictions, expected eSIM, SM-DP+, verification */
    size_t ignored_keys = cd ? check_restrictions(&d, cs, c, cd, &f, &dev) : 0;
    const char *iccid = cd && cd->iccid[0] ? cd->iccid : "";
    check(&d, "expected_esim", eid[0] != '\0', eid[0] ? "EID %s%s%s" : "%s",
          eid[0] ? eid : "no expected EID: import the OEM manifest (esim-mdm import eids)",
          iccid[0] ? ", ICCID " : "", iccid);
    const campaign_spec *spec = c ? campaign_get_spec(c) : NULL;
    check(&d, "smdp", last_error_dns ? 0 : -1, "%s%s%s",
          spec && spec->smdp_url ? "profiles come from " : "no SM-DP+ named by a campaign",
          spec && spec->smdp_url ? spec->smdp_url : "",
          last_error_dns ? "; the device could not resolve its host name (DNS)" : "");
    bool verified =
        (cd && cd->state == CDEV_VERIFIED) || (f.verified_ms && eid[0] && strcmp(f.eid, eid) == 0);
    fmt_time(f.verified_ms, t1);
    check(&d, "esim_verified", verified,
          verified ? "the device reported EID %s with ICCID %s (%s)" : "not verified%s%s%s",
          verified ? f.eid : "",
          verified ? f.iccid
                   : (cd && cd->refresh_acked
                          ? " (the refresh was acknowledged, which is not an installed eSIM)"
                          : ""),
          verified ? t1 : "");

    /* 5. conclusion */
    if (!cd)
        conclude(&d, "no_campaign", "Create a campaign for it (esim-mdm campaign create).",
                 "No campaign has targeted this device yet.");
    /* A failure the device's own report overtook: it has the expected
     * eSIM now (verified after the campaign gave up on it). */
    bool overtaken =
        cd && verified && cd->state != CDEV_VERIFIED &&
        (cd->state == CDEV_FAILED || cd->state == CDEV_UNVERIFIED || cd->state == CDEV_TIMED_OUT) &&
        f.verified_ms >= cd->changed_ms;
    if (cd && !overtaken && last_error_dns && cd->state != CDEV_VERIFIED &&
        cd->state != CDEV_DONE && cd->state != CDEV_CANCELED)
        conclude(&d, "smdp_dns",
                 "Check the SM-DP+ address of the campaign (a typo?) and that the device's "
                 "network resolves it (DNS), then re-run the campaign for this device.",
                 "The device could not find the SM-DP+ %s: its host name does not resolve (a DNS "
                 "failure), so nothing was downloaded.",
                 spec && spec->smdp_url ? spec->smdp_url : "host");
    if (cd) {
        const char *step = campaign_step_name((campaign_step)cd->step);
        const char *why = cd->reason ? cd->reason : "";
        char note[200] = "";
        if (f.supervised == 0)
            snprintf(note, sizeof note,
                     " Note: the device is not supervised, so the eSIM restrictions are not "
                     "enforced.");
        else if (ignored_keys)
            snprintf(note, sizeof note,
                     " Note: this device ignores %zu of the restrictions (see restrictions).",
                     ignored_keys);
        char gave_up[200] = "";
        if (overtaken)
            snprintf(gave_up, sizeof gave_up,
                     " (Campaign %s had marked it %s before the device reported it.)",
                     campaign_id(c), campaign_dev_state_name((campaign_dev_state)cd->state));
        switch (overtaken ? CDEV_VERIFIED : cd->state) {
        case CDEV_VERIFIED:
            conclude(&d, "verified", note[0] ? "Nothing to do for the eSIM." : "Nothing to do.",
                     "The eSIM is installed and verified: the device reports EID %s%s%s.%s%s", eid,
                     iccid[0] ? " with ICCID " : "", iccid, note, gave_up);
            break;
        case CDEV_DONE:
            conclude(&d, "done", "Nothing to do.", "Every step of campaign %s finished%s%s.",
                     campaign_id(c), why[0] ? ": " : "", why);
            break;
        case CDEV_UNVERIFIED:
            if (windows)
                windows_failure(&d, why);
            conclude(
                &d, why[0] && strstr(why, "import") ? "no_expected_eid" : "unverified",
                why[0] && strstr(why, "import")
                    ? "Import the OEM manifest (esim-mdm import eids), then verify again."
                    : "Check the SM-DP+ order for this EID (released? linked to this EID?) and "
                      "the manifest (is the expected EID right?), then verify again.",
                "The eSIM is not verified: %s.", why);
            break;
        case CDEV_FAILED:
            if (windows)
                windows_failure(&d, why);
            if (strstr(why, "8.2") || strstr(why, "consumed") || strstr(why, "already downloaded"))
                conclude(&d, "profile_consumed",
                         "Reset or re-release the order on the SM-DP+ (or order a new profile), "
                         "then run the campaign again for this device.",
                         "The SM-DP+ refused the download: the profile was already downloaded "
                         "once and is consumed (%s).",
                         why);
            else if (last_code == 36002 || strstr(why, "36002"))
                conclude(&d, "hardware_unsupported",
                         "This device cannot take an eSIM: use a physical SIM or another device.",
                         "The device's hardware does not support eSIM (error 36002).");
            else if (strstr(why, "NotNow"))
                conclude(&d, "not_now",
                         "Ask the user to unlock the device, then resume or re-run the campaign.",
                         "The device kept answering NotNow (%u times): it is locked or busy.",
                         (unsigned)cd->not_now);
            else
                conclude(&d, "command_failed",
                         "Read the error above; fix its cause (operator order, device state) and "
                         "re-run the campaign for this device.",
                         "The %s step failed: %s.", step, why);
            break;
        case CDEV_TIMED_OUT:
            if (cd->last_push_ms && dev.last_seen_at < cd->last_push_ms)
                conclude(&d, "offline",
                         "Check that the device is on and has network, then re-run the campaign "
                         "for it.",
                         "The device has not checked in since it was pushed (%s): it was offline "
                         "or off until the campaign expired.",
                         why);
            else
                conclude(&d, "timed_out", "Re-run the campaign for this device.",
                         "The campaign expired before the device finished: %s.", why);
            break;
        case CDEV_CANCELED:
            conclude(&d, "canceled", "Create a new campaign if the eSIM is still wanted.",
                     "Campaign %s was canceled before this device finished.", campaign_id(c));
            break;
        case CDEV_STAGED:
            conclude(&d, "staged", "Resume the campaign (or include this device) to start.",
                     "Campaign %s is staged for this device: nothing was sent.", campaign_id(c));
            break;
        case CDEV_RETRY_WAIT:
            conclude(&d, "not_now",
                     "Ask the user to unlock the device; the service retries on its own.",
                     "The device deferred the %s step (%u NotNow or busy answers): it is locked or "
                     "busy; the service will push again after a back-off.",
                     step, (unsigned)cd->retries);
            break;
        default:
            if (cd->last_push_ms && dev.last_seen_at < cd->last_push_ms &&
                now - cd->last_push_ms > 5000)
                conclude(&d, "waiting_offline",
                         "Wait: the device gets the command when it comes online; check it has "
                         "network if this lasts.",
                         "The %s command is waiting: the device has not checked in since it was "
                         "pushed.",
                         step);
            else
                conclude(&d, "in_progress", "Wait for the device's answer.",
                         "The %s step is in progress.", step);
        }
    }
    json_t *o = json_pack("{s:s, s:o, s:o, s:s, s:s, s:s}", "udid", udid, "checks", d.checks,
                          "commands", cmds, "kind", d.kind ? d.kind : "unknown", "conclusion",
                          d.conclusion, "next_action", d.next);
    if (o && c)
        json_object_set_new(o, "campaign", json_string(campaign_id(c)));
    if (o && cd) {
        json_object_set_new(o, "campaign_state",
                            json_string(campaign_dev_state_name((campaign_dev_state)cd->state)));
        if (eid[0])
            json_object_set_new(o, "expected_eid", json_string(eid));
        if (iccid[0])
            json_object_set_new(o, "expected_iccid", json_string(iccid));
        if (spec && spec->smdp_url)
            json_object_set_new(o, "smdp_url", json_string(spec->smdp_url));
    }
    if (!o)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    *out = o;
    return ESIM_OK;
}

/* ---- the diagnosis route: its reads as a store job ------------------------------------------ */

typedef struct {
    campaigns *cs;
    esim_api_request *r;
    diag_read in;
} diag_job;

static void diagnose_run(store *st, void *arg)
{
    diag_job *j = arg;
    diagnose_read(st, &j->in);
}

static void diagnose_done(esim_service *svc, void *arg, bool ran)
{
    (void)svc;
    diag_job *j = arg;
    json_t *out = NULL;
    esim_error e = {{0}};
    esim_err rc = ran ? diagnose_build(j->cs, &j->in, &out, &e)
                      : esim_fail(&e, ESIM_ESTORE, "the service is stopping");
    if (rc != ESIM_OK)
        campaigns_api_fail(j->r, rc, "udid", &e);
    else
        esim_api_reply_json(j->r, 200, out);
    diag_read_free(&j->in);
    free(j);
}

void campaigns_diagnose(campaigns *cs, esim_api_request *r, const char *udid)
{
    esim_error e = {{0}};
    esim_err rc = esim_udid_validate(udid, &e);
    diag_job *j = rc == ESIM_OK ? calloc(1, sizeof *j) : NULL;
    if (rc == ESIM_OK && !j)
        rc = esim_fail(&e, ESIM_ENOMEM, "out of memory");
    if (rc != ESIM_OK) {
        campaigns_api_fail(r, rc, "udid", &e);
        return;
    }
    j->cs = cs;
    j->r = r;
    snprintf(j->in.udid, sizeof j->in.udid, "%s", udid);
    esim_api_defer(r);
    if (esim_service_store_job(campaigns_service(cs), diagnose_run, diagnose_done, j) != ESIM_OK) {
        j->in.rc = esim_fail(&j->in.err, ESIM_ENOMEM, "out of memory");
        diagnose_done(campaigns_service(cs), j, true);
    }
}
