/*
 * webhook.c — every check-in and command result POSTed as JSON to the
 * configured URLs in NanoMDM's webhook shape, signed with HMAC-SHA256. Sent
 * with libcurl's multi interface on the service's own libevent loop, so a
 * slow or dead receiver never holds up a device: deliveries wait in memory,
 * retry with back-off, and the oldest are dropped (and counted) beyond a cap.
 * Each delivery is also a row of the store's outbox, written in the batch of
 * the change it reports (SQLite), or in the change's own unit (PostgreSQL:
 * webhooks_write, on the pool worker that runs it), and
 * deleted once answered 2xx (or given up, or dropped): a restart starts again every delivery still
 * in the outbox, with the same body and event id, so an event is delivered at least once. Instances
 * sharing a store share the outbox: each row is claimed by the instance sending it (renewed from
 * the tick while it tries), and one whose instance died is claimed and sent by another once the
 * claim lapses (WEBHOOK_CLAIM_MS), with the same body and event id.
 *
 * On a store without batches (PostgreSQL) the bookkeeping after a delivery
 * is store jobs (on a pool worker, never holding the loop): the rows of the
 * deliveries that ended meanwhile are deleted together, one job at a time
 * (outbox_flush), and the tick's renewal of this instance's claims and its
 * take-over of a dead instance's rows are one job at a time too
 * (webhooks_tick); a row stays in the outbox until its delete commits, so an
 * instance killed before that leaves it to be sent again with its id.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "core/internal.h"
#include "service/curl_loop.h"
#include "service/service_internal.h"

struct hook_job {
    struct hook_job *prev, *next; /* in the list once started; |next| chains prepared ones */
    svc_webhooks *wh;
    int64_t outbox_id; /* its row in the store's outbox; 0 when it could not be written */
    size_t url;
    char *body;
    size_t len;
    int attempts;
    CURL *easy; /* non-NULL while in flight */
    struct curl_slist *headers;
    struct event *retry_ev; /* waiting for the next attempt */
};

/* A webhook_failed event waiting for the next delete job. */
typedef struct {
    int64_t at;
    char detail[600];
} failed_note;

/* The bookkeeping of ended deliveries, written by one store job: the rows
 * to delete and the give-ups to record. */
typedef struct {
    int64_t *ids;
    size_t n_ids, cap_ids;
    failed_note *notes;
    size_t n_notes, cap_notes;
} outbox_work;

struct svc_webhooks {
    esim_service *svc;
    outbox_work todo;       /* ended since the last delete job started */
    bool flush_busy;        /* a delete job is out */
    bool tick_busy;         /* a claims job is out */
    struct event *flush_ev; /* the delete job's start, once per loop turn */
    curl_loop loop;         /* its requests on the service's loop */
    hook_job *head, *tail;
    size_t n_jobs;
    uint64_t *failing; /* per URL: failed attempts in a row (0: healthy) */
    int64_t *url_keys; /* per URL, its key in the outbox */
};

/* How long an instance's claim on its outbox rows lasts unless renewed (from
 * every tick): a dead instance's deliveries start again elsewhere after
 * this. */
#define WEBHOOK_CLAIM_MS 10000

static void job_start(hook_job *j);

static bool shared_outbox(const esim_service *svc)
{
    return (esim_store_features(svc->st) & ESIM_STORE_FEATURE_SHARED) != 0;
}

static void check_finished(svc_webhooks *wh);
static int64_t url_key(const char *url);
static void restart_outbox(svc_webhooks *wh);

/* Frees a job that was never started (no list, no transfer, no timer). */
static void job_free_unlisted(hook_job *j)
{
    curl_slist_free_all(j->headers);
    free(j->body);
    free(j);
}

static void outbox_flush_soon(svc_webhooks *wh);

/* Whether the outbox's bookkeeping is store jobs (PostgreSQL) rather than
 * a part of the loop turn's batch (SQLite). */
static bool jobs_outbox(const esim_service *svc)
{
    return !(esim_store_features(svc->st) & ESIM_STORE_FEATURE_BATCH);
}

static bool work_add_id(outbox_work *w, int64_t id)
{
    if (w->n_ids == w->cap_ids) {
        int64_t *v = esim_grow(w->ids, &w->cap_ids, w->n_ids + 1, sizeof *v);
        if (!v)
            return false;
        w->ids = v;
    }
    w->ids[w->n_ids++] = id;
    return true;
}

static bool work_add_note(outbox_work *w, const char *detail)
{
    if (w->n_notes == w->cap_notes) {
        failed_note *v = esim_grow(w->notes, &w->cap_notes, w->n_notes + 1, sizeof *v);
        if (!v)
            return false;
        w->notes = v;
    }
    failed_note *n = &w->notes[w->n_notes++];
    n->at = esim_now_ms();
    snprintf(n->detail, sizeof n->detail, "%s", detail);
    return true;
}

/* Writes |w| on |st|: its rows deleted (all or none), then its notes as
 * webhook_failed events. Returns what the delete returned. */
static esim_err work_write(store *st, const outbox_work *w)
{
    esim_err rc = esim_store_outbox_delete_ids(st, w->ids, w->n_ids, NULL);
    for (size_t i = 0; i < w->n_notes; i++)
        esim_store_event_append(st, "webhook_failed", NULL, NULL, w->notes[i].detail, NULL, 0,
                                w->notes[i].at, NULL);
    return rc;
}

static void work_free(outbox_work *w)
{
    free(w->ids);
    free(w->notes);
    memset(w, 0, sizeof *w);
}

/* Row |id|'s delivery is over (delivered, given up or dropped): the row
 * goes, in the loop turn's batch (SQLite) or the next delete job. */
static void outbox_forget(svc_webhooks *wh, int64_t id)
{
    esim_service *svc = wh->svc;
    if (!id)
        return;
    if (jobs_outbox(svc)) {
        if (work_add_id(&wh->todo, id))
            outbox_flush_soon(wh);
        else /* out of memory: the row is sent again, later or elsewhere */
            svc_store_failed(svc, "out of memory");
        return;
    }
    svc_batch_open(svc);
    if (esim_store_outbox_delete(svc->st, id, NULL) != ESIM_OK)
        svc_store_failed(svc, NULL);
}

static void outbox_done(hook_job *j)
{
    outbox_forget(j->wh, j->outbox_id);
    j->outbox_id = 0;
}

/* A delivery given up: the webhook_failed event, with the loop turn's
 * batch (SQLite) or in the next delete job. */
static void outbox_failed_note(svc_webhooks *wh, const char *detail)
{
    esim_service *svc = wh->svc;
    if (jobs_outbox(svc)) {
        if (work_add_note(&wh->todo, detail))
            outbox_flush_soon(wh);
        return;
    }
    esim_store_event_append(svc->st, "webhook_failed", NULL, NULL, detail, NULL, 0, esim_now_ms(),
                            NULL);
}

/* The delete job: what ended since the last one, on a worker. Not an
 * admin job: it is a part of the device path's work (the admin jobs' half
 * of the workers is the API's and the campaigns'), and one statement. */
typedef struct {
    pool_job job; /* first: the pool's view of it */
    svc_webhooks *wh;
    outbox_work w;
    esim_err rc;
} flush_job;

static void flush_run(store *st, pool_job *pj)
{
    flush_job *f = (flush_job *)pj;
    f->rc = work_write(st, &f->w);
}

static void outbox_flush(svc_webhooks *wh);

static void flush_done(esim_service *svc, pool_job *pj)
{
    flush_job *f = (flush_job *)pj;
    bool ran = pj->ran;
    svc_webhooks *wh = f->wh;
    wh->flush_busy = false;
    if (ran && f->rc != ESIM_OK)
        svc_store_failed(svc, NULL);
    if (!ran || f->rc != ESIM_OK) {
        /* Not deleted: tried again with the next job (and at the latest
         * when the service stops). Meanwhile the rows stay claimed by this
         * instance, and are sent once more only if it dies. */
        for (size_t i = 0; i < f->w.n_ids; i++)
            (void)work_add_id(&wh->todo, f->w.ids[i]);
        for (size_t i = 0; !ran && i < f->w.n_notes; i++)
            (void)work_add_note(&wh->todo, f->w.notes[i].detail);
    }
    bool again = ran && f->rc == ESIM_OK && (wh->todo.n_ids || wh->todo.n_notes);
    work_free(&f->w);
    free(f);
    if (again) /* after a failure, the next ended delivery or tick tries */
        outbox_flush_soon(wh);
}

/* Starts a delete job with what waits, unless one is out (its |done| starts
 * the next). */
static void outbox_flush(svc_webhooks *wh)
{
    if (wh->flush_busy || (!wh->todo.n_ids && !wh->todo.n_notes))
        return;
    flush_job *f = calloc(1, sizeof *f);
    if (!f)
        return; /* tried again at the next ended delivery or tick */
    f->wh = wh;
    f->w = wh->todo;
    memset(&wh->todo, 0, sizeof wh->todo);
    wh->flush_busy = true;
    f->job.run = flush_run;
    f->job.done = flush_done;
    pool_run(wh->svc, &f->job);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    outbox_flush(arg);
}

/* The deliveries that end in one loop turn share a delete job. */
static void outbox_flush_soon(svc_webhooks *wh)
{
    if (wh->flush_busy)
        return;
    if (wh->flush_ev)
        event_active(wh->flush_ev, EV_TIMEOUT, 0);
    else
        outbox_flush(wh);
}

static void job_free(hook_job *j)
{
    svc_webhooks *wh = j->wh;
    if (j->prev)
        j->prev->next = j->next;
    else
        wh->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        wh->tail = j->prev;
    wh->n_jobs--;
    if (j->easy) {
        curl_multi_remove_handle(wh->loop.multi, j->easy);
        curl_easy_cleanup(j->easy);
    }
    curl_slist_free_all(j->headers);
    if (j->retry_ev)
        event_free(j->retry_ev);
    free(j->body);
    free(j);
}

static void on_finished(void *arg)
{
    check_finished(arg);
}

/*
 * A webhook URL as it may be shown in the ledger, logs and errors: a
 * password in "user:pass@" and the query string (where receivers often put
 * a token) become "***". The URL itself stays in memory only.
 */
static void redact_url(const char *url, char *out, size_t out_len)
{
    const char *scheme = strstr(url, "://");
    const char *host = scheme ? scheme + 3 : url;
    size_t auth_len = strcspn(host, "/?#");
    const char *at = memchr(host, '@', auth_len);
    /* The last '@' before the path ends the user information. */
    for (const char *p = at; p && p < host + auth_len;) {
        at = p;
        p = memchr(p + 1, '@', (size_t)(host + auth_len - p - 1));
    }
    esim_buf b = {0};
    esim_buf_append(&b, url, (size_t)(host - url));
    if (at) {
        const char *colon = memchr(host, ':', (size_t)(at - host));
        esim_buf_append(&b, host, (size_t)((colon ? colon : at) - host));
        esim_buf_append_str(&b, colon ? ":***@" : "@");
        host = at + 1;
    }
    size_t rest = strcspn(host, "?#");
    esim_buf_append(&b, host, rest);
    if (host[rest] == '?')
        esim_buf_append_str(&b, "?***");
    snprintf(out, out_len, "%s", b.data ? (const char *)b.data : "");
    esim_buf_free(&b);
    for (char *c = out; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7F)
            *c = '?';
}

/* ---- attempts and retries ---------------------------------------------------------- */

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    hook_job *j = arg;
    event_free(j->retry_ev);
    j->retry_ev = NULL;
    job_start(j);
}

static void job_failed_attempt(hook_job *j)
{
    svc_webhooks *wh = j->wh;
    esim_service *svc = wh->svc;
    if (j->attempts >= svc->cfg.webhook_max_attempts) {
        svc->m.webhooks_failed++;
        char detail[600], shown[512];
        redact_url(svc->webhook_urls[j->url], shown, sizeof shown);
        snprintf(detail, sizeof detail, "gave up on %s after %d attempts", shown, j->attempts);
        outbox_done(j);
        outbox_failed_note(wh, detail);
        job_free(j);
        return;
    }
    svc->m.webhooks_retried++;
    /* Back-off doubles from the base, capped at a minute. */
    int64_t delay = svc->cfg.webhook_retry_base_ms;
    for (int i = 1; i < j->attempts && delay < 60000; i++)
        delay *= 2;
    if (delay > 60000)
        delay = 60000;
    j->retry_ev = evtimer_new(svc->base, on_retry, j);
    if (!j->retry_ev) {
        job_free(j);
        return;
    }
    struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)((delay % 1000) * 1000)};
    evtimer_add(j->retry_ev, &tv);
}

/* A receiver's trouble is logged when it starts and when it stops. */
static void url_health(svc_webhooks *wh, size_t url, bool ok, long code, CURLcode res)
{
    esim_service *svc = wh->svc;
    if (!wh->failing || url >= svc->cfg.n_webhook_urls)
        return;
    char shown[512];
    redact_url(svc->webhook_urls[url], shown, sizeof shown);
    if (ok) {
        if (wh->failing[url]) {
            char n[24];
            snprintf(n, sizeof n, "%llu", (unsigned long long)wh->failing[url]);
            svc_log(svc, ESIM_LOG_INFO, "webhook_recovered", "url", shown, "failures", n, NULL);
        }
        wh->failing[url] = 0;
        return;
    }
    if (wh->failing[url]++ == 0) {
        char st[8];
        snprintf(st, sizeof st, "%ld", code);
        svc_log(svc, ESIM_LOG_WARN, "webhook_failing", "url", shown, "status", code ? st : NULL,
                "reason", res != CURLE_OK ? curl_easy_strerror(res) : "not a 2xx answer", NULL);
    }
}

static void check_finished(svc_webhooks *wh)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(wh->loop.multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        hook_job *j = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        long code = 0;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
        CURLcode res = msg->data.result;
        curl_multi_remove_handle(wh->loop.multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
        bool ok = res == CURLE_OK && code >= 200 && code < 300;
        url_health(wh, j->url, ok, code, res);
        if (ok) {
            wh->svc->m.webhooks_delivered++;
            outbox_done(j);
            job_free(j);
        } else {
            job_failed_attempt(j);
        }
    }
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    (void)ptr;
    (void)userdata;
    return size * nmemb;
}

static void job_start(hook_job *j)
{
    svc_webhooks *wh = j->wh;
    esim_service *svc = wh->svc;
    j->attempts++;
    j->easy = curl_easy_init();
    if (!j->easy) {
        job_failed_attempt(j);
        return;
    }
    curl_easy_setopt(j->easy, CURLOPT_URL, svc->webhook_urls[j->url]);
    curl_easy_setopt(j->easy, CURLOPT_POSTFIELDS, j->body);
    curl_easy_setopt(j->easy, CURLOPT_POSTFIELDSIZE, (long)j->len);
    curl_easy_setopt(j->easy, CURLOPT_HTTPHEADER, j->headers);
    curl_easy_setopt(j->easy, CURLOPT_TIMEOUT_MS, (long)svc->cfg.webhook_timeout_ms);
    curl_easy_setopt(j->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(j->easy, CURLOPT_PRIVATE, j);
    curl_easy_setopt(j->easy, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(j->easy, CURLOPT_PROTOCOLS_STR, "http,https");
    if (curl_multi_add_handle(wh->loop.multi, j->easy) != CURLM_OK) {
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
        job_failed_attempt(j);
    }
}

/* ---- set-up ------------------------------------------------------------------------------ */

esim_err webhooks_init(esim_service *svc, esim_error *err)
{
    for (size_t i = 0; i < svc->cfg.n_webhook_urls; i++) {
        const char *u = svc->webhook_urls[i];
        char shown[512] = "";
        if (u)
            redact_url(u, shown, sizeof shown);
        if (!u || (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0) ||
            strlen(u) < 10)
            return esim_fail(err, ESIM_EINVAL,
                             "bad webhook URL '%s': use http://HOST[:PORT]/PATH or https://...",
                             shown);
        /* Spaces and control characters (CR, LF) have no place in a URL and
         * would let a configured URL smuggle a header or a second request. */
        for (const unsigned char *c = (const unsigned char *)u; *c; c++)
            if (*c <= 0x20 || *c == 0x7F)
                return esim_fail(err, ESIM_EINVAL,
                                 "bad webhook URL '%s': it holds a space or a control character "
                                 "(byte %zu); percent-encode it",
                                 shown, (size_t)((const char *)c - u));
    }
    if (svc->cfg.webhook_max_attempts <= 0)
        svc->cfg.webhook_max_attempts = 12;
    if (svc->cfg.webhook_retry_base_ms <= 0)
        svc->cfg.webhook_retry_base_ms = 500;
    if (svc->cfg.webhook_timeout_ms <= 0)
        svc->cfg.webhook_timeout_ms = 5000;
    if (svc->cfg.webhook_queue_max == 0)
        svc->cfg.webhook_queue_max = 10000;
    if (svc->cfg.n_webhook_urls == 0)
        return ESIM_OK;
    svc_webhooks *wh = calloc(1, sizeof *wh);
    if (!wh)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    svc->webhooks = wh;
    wh->svc = svc;
    int loop_rc = curl_loop_init(&wh->loop, svc->base, on_finished, wh);
    wh->failing = calloc(svc->cfg.n_webhook_urls, sizeof *wh->failing);
    if (loop_rc != 0 || !wh->failing)
        return esim_fail(err, ESIM_ENOMEM, "cannot set up webhooks: out of memory");
    wh->url_keys = calloc(svc->cfg.n_webhook_urls, sizeof *wh->url_keys);
    if (!wh->url_keys)
        return esim_fail(err, ESIM_ENOMEM, "cannot set up webhooks: out of memory");
    for (size_t i = 0; i < svc->cfg.n_webhook_urls; i++)
        wh->url_keys[i] = url_key(svc->webhook_urls[i]);
    wh->flush_ev = event_new(svc->base, -1, 0, on_flush, wh);
    if (!wh->flush_ev)
        return esim_fail(err, ESIM_ENOMEM, "cannot set up webhooks: out of memory");
    restart_outbox(wh);
    return ESIM_OK;
}

void webhooks_free(esim_service *svc)
{
    svc_webhooks *wh = svc->webhooks;
    if (!wh)
        return;
    /* Stopping (the store pool stopped already, its jobs' |done|s ran):
     * the rows of the deliveries that ended go now, on the loop; what this
     * instance still held is another's to send at once, not after its
     * claim lapses. */
    if (work_write(svc->st, &wh->todo) != ESIM_OK)
        svc_store_failed(svc, NULL);
    work_free(&wh->todo);
    if (wh->flush_ev)
        event_free(wh->flush_ev);
    if (wh->n_jobs && shared_outbox(svc))
        esim_store_outbox_renew(svc->st, svc->instance_id, 1, NULL);
    while (wh->head)
        job_free(wh->head);
    curl_loop_free(&wh->loop);
    free(wh->failing);
    free(wh->url_keys);
    free(wh);
    svc->webhooks = NULL;
}

size_t webhooks_pending(const esim_service *svc)
{
    return svc->webhooks ? svc->webhooks->n_jobs : 0;
}

/* ---- the payload -------------------------------------------------------------------------- */

static const char *topic_for(const esim_msg *msg)
{
    switch (msg->kind) {
    case ESIM_MSG_AUTHENTICATE:
        return "mdm.Authenticate";
    case ESIM_MSG_TOKEN_UPDATE:
        return "mdm.TokenUpdate";
    case ESIM_MSG_CHECKOUT:
        return "mdm.CheckOut";
    case ESIM_MSG_RESULT:
        return "mdm.Connect";
    case ESIM_MSG_USER_AUTHENTICATE:
        return "mdm.UserAuthenticate";
    case ESIM_MSG_SET_BOOTSTRAP_TOKEN:
        return "mdm.SetBootstrapToken";
    case ESIM_MSG_GET_BOOTSTRAP_TOKEN:
        return "mdm.GetBootstrapToken";
    case ESIM_MSG_DECLARATIVE_MANAGEMENT:
        return "mdm.DeclarativeManagement";
    case ESIM_MSG_GET_TOKEN:
        return "mdm.GetToken";
    }
    return "mdm.Unknown";
}

/* url_params: the device request's query parameters as an object (the
 * first value of a repeated key, as NanoMDM takes it), {} when none. */
static json_t *url_params(const char *query)
{
    json_t *o = json_object();
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (o && query && *query && evhttp_parse_query_str(query, &q) == 0) {
        struct evkeyval *kv;
        TAILQ_FOREACH(kv, &q, next)
        {
            if (json_object_get(o, kv->key) || !svc_utf8_valid(kv->key))
                continue;
            char *v = strdup(kv->value);
            if (!v)
                continue;
            svc_utf8_sanitize(v);
            json_object_set_new(o, kv->key, json_string(v));
            free(v);
        }
    }
    evhttp_clear_headers(&q);
    return o;
}

/* One event in NanoMDM's webhook shape (its service/webhook/event.json):
 * topic, event_id, created_at, and checkin_event or acknowledge_event with
 * udid or enrollment_id, ids (NanoMDM's enrollment id and its type), url_params,
 * raw_payload (the body as sent, base64), token_update_tally on
 * TokenUpdate, status and (not on Idle) command_uuid on results. */
static char *build_payload(const esim_msg *msg, const void *raw, size_t len,
                           const svc_event_extra *x)
{
    esim_buf b64 = {0};
    if (esim_base64_encode(raw, len, &b64) != ESIM_OK)
        return NULL;
    char id[ESIM_UUID_LEN + 1];
    esim_uuid_new(id);
    int64_t now = esim_now_ms();
    time_t secs = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char when[80];
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(now % 1000));
    /* The device channel only (user-channel messages are refused before
     * this): the id is the UDID, or the EnrollmentID of a User Enrollment. */
    json_t *ids = json_pack("{s:s,s:s}", "id", msg->udid, "type",
                            msg->is_enrollment_id ? "User Enrollment (Device)" : "Device");
    json_t *ev = json_pack("{s:s,s:o,s:o,s:s}", msg->is_enrollment_id ? "enrollment_id" : "udid",
                           msg->udid, "ids", ids, "url_params", url_params(x ? x->query : NULL),
                           "raw_payload", (const char *)b64.data);
    esim_buf_free(&b64);
    if (!ev)
        return NULL;
    if (msg->kind == ESIM_MSG_RESULT) {
        json_object_set_new(ev, "status", json_string(esim_status_name(msg->status)));
        if (msg->command_uuid[0]) /* absent, not empty, on Idle */
            json_object_set_new(ev, "command_uuid", json_string(msg->command_uuid));
    }
    if (msg->kind == ESIM_MSG_TOKEN_UPDATE && x && x->tally >= 0)
        json_object_set_new(ev, "token_update_tally", json_integer(x->tally));
    json_t *root =
        json_pack("{s:s,s:s,s:s,s:o}", "topic", topic_for(msg), "event_id", id, "created_at", when,
                  msg->kind == ESIM_MSG_RESULT ? "acknowledge_event" : "checkin_event", ev);
    char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return s;
}

/* X-Hmac-Signature: base64(HMAC-SHA256(secret, body)), as NanoMDM signs. */
static struct curl_slist *headers_for(const esim_service *svc, const char *body, size_t len)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (h && svc->webhook_secret) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int mac_len = 0;
        esim_buf b64 = {0};
        if (HMAC(EVP_sha256(), svc->webhook_secret, (int)strlen(svc->webhook_secret),
                 (const unsigned char *)body, len, mac, &mac_len) &&
            esim_base64_encode(mac, mac_len, &b64) == ESIM_OK) {
            char line[128];
            snprintf(line, sizeof line, "X-Hmac-Signature: %s", (const char *)b64.data);
            struct curl_slist *h2 = curl_slist_append(h, line);
            if (h2)
                h = h2;
        }
        esim_buf_free(&b64);
    }
    return h;
}

/* The outbox names a receiver by a key made from its URL, never the URL
 * itself (it may hold credentials): the first 63 bits of its SHA-256. */
static int64_t url_key(const char *url)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    uint64_t k = 0;
    if (EVP_Digest(url, strlen(url), md, &len, EVP_sha256(), NULL) == 1)
        for (int i = 0; i < 8; i++)
            k = k << 8 | md[i];
    return (int64_t)(k >> 1);
}

static hook_job *job_new(svc_webhooks *wh, size_t url, char *body, size_t len)
{
    hook_job *j = calloc(1, sizeof *j);
    if (!j) {
        free(body);
        return NULL;
    }
    j->wh = wh;
    j->url = url;
    j->body = body;
    j->len = len;
    j->headers = headers_for(wh->svc, body, len);
    return j;
}

bool webhooks_in_unit(const esim_service *svc)
{
    return svc->webhooks && !(esim_store_features(svc->st) & ESIM_STORE_FEATURE_BATCH);
}

/* One delivery of |payload| (taken) per receiver, each with its outbox
 * row written on |st| and claimed by this instance. |whole|: all or none,
 * a row or memory that fails undoes the lot (its error in |err|); else a
 * delivery whose row could not be written still goes, from memory only
 * (early beats never), and is counted in *rows_failed. */
static esim_err deliveries_of(const esim_service *svc, store *st, char *payload, bool whole,
                              hook_job **out, size_t *rows_failed, esim_error *err)
{
    svc_webhooks *wh = svc->webhooks;
    size_t plen = strlen(payload);
    hook_job *first = NULL, **tail = &first;
    int64_t now = esim_now_ms();
    esim_err rc = ESIM_OK;
    for (size_t u = 0; u < svc->cfg.n_webhook_urls && rc == ESIM_OK; u++) {
        char *body = u + 1 == svc->cfg.n_webhook_urls ? payload : strdup(payload);
        if (body == payload)
            payload = NULL;
        hook_job *j = body ? job_new(wh, u, body, plen) : NULL;
        if (!j) {
            if (whole)
                rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            continue;
        }
        *tail = j;
        tail = &j->next;
        esim_err wrc =
            esim_store_outbox_add_claimed(st, wh->url_keys[u], body, plen, svc->instance_id,
                                          WEBHOOK_CLAIM_MS, now, &j->outbox_id, whole ? err : NULL);
        if (wrc != ESIM_OK && whole) {
            rc = wrc;
        } else if (wrc != ESIM_OK) {
            (*rows_failed)++;
            j->outbox_id = 0;
        }
    }
    free(payload);
    if (rc != ESIM_OK) {
        webhooks_discard(first);
        first = NULL;
    }
    *out = first;
    return rc;
}

esim_err webhooks_write(const esim_service *svc, store *st, const esim_msg *msg, const void *raw,
                        size_t len, const svc_event_extra *x, hook_job **out, esim_error *err)
{
    *out = NULL;
    if (!svc->webhooks)
        return ESIM_OK;
    char *payload = build_payload(msg, raw, len, x);
    if (!payload)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    return deliveries_of(svc, st, payload, true, out, NULL, err);
}

hook_job *webhooks_prepare(esim_service *svc, const esim_msg *msg, const void *raw, size_t len,
                           const svc_event_extra *x)
{
    if (!svc->webhooks)
        return NULL;
    char *payload = build_payload(msg, raw, len, x);
    if (!payload)
        return NULL;
    hook_job *jobs = NULL;
    size_t rows_failed = 0;
    (void)deliveries_of(svc, svc->st, payload, false, &jobs, &rows_failed, NULL);
    while (rows_failed--)
        svc_store_failed(svc, NULL);
    return jobs;
}

/* Puts |j| at the end of the list and starts it; never lets a dead
 * receiver grow memory without bound: beyond the cap the oldest delivery
 * goes first, counted and out of the outbox (|room_made|: a row the tick's
 * job claimed when there was room for it goes in as well; the claims are
 * bounded by the cap, so memory is too). */
static void job_enqueue_room(svc_webhooks *wh, hook_job *j, bool room_made)
{
    esim_service *svc = wh->svc;
    while (!room_made && wh->n_jobs >= svc->cfg.webhook_queue_max && wh->head) {
        svc->m.webhooks_dropped++;
        outbox_done(wh->head);
        job_free(wh->head);
    }
    j->next = NULL;
    j->prev = wh->tail;
    if (wh->tail)
        wh->tail->next = j;
    else
        wh->head = j;
    wh->tail = j;
    wh->n_jobs++;
    job_start(j);
}

static void job_enqueue(svc_webhooks *wh, hook_job *j)
{
    job_enqueue_room(wh, j, false);
}

void webhooks_launch(esim_service *svc, hook_job *jobs)
{
    while (jobs) {
        hook_job *next = jobs->next;
        job_enqueue(svc->webhooks, jobs);
        jobs = next;
    }
}

void webhooks_discard(hook_job *jobs)
{
    while (jobs) {
        hook_job *next = jobs->next;
        job_free_unlisted(jobs);
        jobs = next;
    }
}

/* Starts the deliveries of outbox |rows| (same body, same event id). Rows
 * for a receiver no longer configured are dropped; so are those beyond the
 * queue's cap, counted, unless |claimed| (the tick's job claimed them when
 * there was room: they go in whatever came meanwhile). */
static void start_rows(svc_webhooks *wh, const store_outbox_row *rows, size_t n, bool claimed)
{
    esim_service *svc = wh->svc;
    for (size_t i = 0; i < n; i++) {
        size_t u = 0;
        while (u < svc->cfg.n_webhook_urls && wh->url_keys[u] != rows[i].url_key)
            u++;
        char *body = NULL;
        if (u < svc->cfg.n_webhook_urls && (claimed || wh->n_jobs < svc->cfg.webhook_queue_max) &&
            (body = malloc(rows[i].body.len + 1)) != NULL) {
            memcpy(body, rows[i].body.data, rows[i].body.len);
            body[rows[i].body.len] = '\0';
        }
        hook_job *j = body ? job_new(wh, u, body, rows[i].body.len) : NULL;
        if (!j) {
            svc->m.webhooks_dropped++;
            outbox_forget(wh, rows[i].id);
            continue;
        }
        j->outbox_id = rows[i].id;
        job_enqueue_room(wh, j, claimed);
    }
}

/* At start-up: every delivery the outbox still holds, oldest first, as it
 * was. On a shared outbox only the rows nobody holds: those of a live
 * instance are its own to send. */
static void restart_outbox(svc_webhooks *wh)
{
    esim_service *svc = wh->svc;
    if (shared_outbox(svc)) {
        webhooks_tick(svc, esim_now_ms());
        return;
    }
    int64_t after = 0;
    for (;;) {
        store_outbox_row *rows = NULL;
        size_t n = 0;
        if (esim_store_outbox_list(svc->st, after, 1000, &rows, &n, NULL) != ESIM_OK) {
            svc_store_failed(svc, NULL);
            return;
        }
        if (n)
            after = rows[n - 1].id;
        start_rows(wh, rows, n, false);
        esim_store_outbox_free(rows, n);
        if (n < 1000)
            return;
    }
}

/* On a shared outbox, every tick, one store job at a time (a tick that
 * finds the last one out skips it): this instance's claims are renewed,
 * and the rows of an instance that died (claims lapsed) are taken, as many
 * as the queue had room for when the job started; their deliveries start
 * on the loop when it is back. */
typedef struct {
    pool_job job; /* first: the pool's view of it (not an admin job, as the delete's) */
    svc_webhooks *wh;
    char owner[128];
    bool renew;
    size_t room;
    esim_err rc;
    store_outbox_row *rows;
    size_t n;
} claims_job;

static void claims_run(store *st, pool_job *pj)
{
    claims_job *c = (claims_job *)pj;
    if (c->renew && esim_store_outbox_renew(st, c->owner, WEBHOOK_CLAIM_MS, NULL) != ESIM_OK)
        c->rc = ESIM_ESTORE;
    size_t room = c->room;
    while (room > 0) {
        store_outbox_row *rows = NULL;
        size_t n = 0, want = room < 1000 ? room : 1000;
        if (esim_store_outbox_claim(st, c->owner, WEBHOOK_CLAIM_MS, want, &rows, &n, NULL) !=
            ESIM_OK) {
            c->rc = ESIM_ESTORE;
            return;
        }
        store_outbox_row *all = n ? realloc(c->rows, (c->n + n) * sizeof *all) : c->rows;
        if (n && !all) { /* out of memory: left to lapse, and claimed again */
            esim_store_outbox_free(rows, n);
            return;
        }
        c->rows = all;
        if (n)
            memcpy(c->rows + c->n, rows, n * sizeof *rows);
        c->n += n;
        free(rows); /* the bodies moved to c->rows */
        if (n < want)
            return;
        room -= n;
    }
}

static void claims_done(esim_service *svc, pool_job *pj)
{
    claims_job *c = (claims_job *)pj;
    bool ran = pj->ran;
    svc_webhooks *wh = c->wh;
    wh->tick_busy = false;
    if (ran && c->rc != ESIM_OK)
        svc_store_failed(svc, NULL);
    start_rows(wh, c->rows, c->n, true);
    esim_store_outbox_free(c->rows, c->n);
    free(c);
}

void webhooks_tick(esim_service *svc, int64_t now)
{
    (void)now;
    svc_webhooks *wh = svc->webhooks;
    if (!wh)
        return;
    outbox_flush(wh); /* what a failed delete job left */
    if (!shared_outbox(svc) || wh->tick_busy)
        return;
    claims_job *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->wh = wh;
    snprintf(c->owner, sizeof c->owner, "%s", svc->instance_id);
    /* Its deliveries' rows, and those of ended ones not deleted yet. */
    c->renew = wh->n_jobs > 0 || wh->todo.n_ids > 0 || wh->flush_busy;
    c->room = svc->cfg.webhook_queue_max > wh->n_jobs ? svc->cfg.webhook_queue_max - wh->n_jobs : 0;
    wh->tick_busy = true;
    c->job.run = claims_run;
    c->job.done = claims_done;
    pool_run(svc, &c->job);
}
