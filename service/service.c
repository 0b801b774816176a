/*
 * service.c — the esim_service context: settings, start-up (store, TLS,
 * listener, housekeeping tick), shutdown, the extension hooks, enqueue and
 * push as the API and other modules call them, and the /metrics text.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <openssl/crypto.h>
#include <openssl/err.h>

#include "core/internal.h"
#include "core/tls.h"
#include "service/service_internal.h"

void esim_service_config_init(esim_service_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->listen = "127.0.0.1:8080";
    cfg->store_pool = 4;
    cfg->device_auth = ESIM_DEVICE_AUTH_SIGNATURE;
    cfg->max_body = 1024 * 1024;
    cfg->max_depth = 32;
    cfg->device_rate = 20;
    cfg->device_burst = 40;
    cfg->not_now_backoff_ms = 30000;
    cfg->webhook_max_attempts = 12;
    cfg->webhook_retry_base_ms = 500;
    cfg->webhook_timeout_ms = 5000;
    cfg->webhook_queue_max = 10000;
    cfg->tick_ms = 1000;
    cfg->header_timeout_ms = 30000;
    cfg->body_timeout_ms = 60000;
    cfg->replay_window_ms = 600000;
    cfg->windows_max_messages = 64;
    cfg->wns_max_attempts = 4;
    cfg->wns_retry_base_ms = 500;
    cfg->wns_timeout_ms = 10000;
}

esim_err esim_device_auth_parse(const char *word, esim_device_auth *out, esim_error *err)
{
    if (word && strcmp(word, "signature") == 0)
        *out = ESIM_DEVICE_AUTH_SIGNATURE;
    else if (word && strcmp(word, "mtls") == 0)
        *out = ESIM_DEVICE_AUTH_MTLS;
    else if (word && strcmp(word, "none") == 0)
        *out = ESIM_DEVICE_AUTH_NONE;
    else if (word && strcmp(word, "header") == 0)
        *out = ESIM_DEVICE_AUTH_HEADER;
    else
        return esim_fail(err, ESIM_EINVAL,
                         "unknown device auth '%s': use signature, mtls, header or none",
                         word ? word : "");
    return ESIM_OK;
}

const char *esim_push_state_name(esim_push_state s)
{
    static const char *const names[] = {"sent",       "pending", "no_token",
                                        "dead_token", "failed",  "skipped"};
    if ((int)s < 0 || (size_t)s >= sizeof names / sizeof names[0])
        return "failed";
    return names[s];
}

/* ---- HTTP helpers ------------------------------------------------------------- */

/* The Date header's text (RFC 1123, what evhttp would write), kept per
 * thread and made again only when the second changes: evhttp makes it for
 * every answer that has none (gmtime and a formatted print, about 3,600
 * instructions, a quarter of writing a small answer out). */
static const char *date_header_text(void)
{
    static _Thread_local time_t last_sec = -1;
    static _Thread_local char text[48];
    time_t now = time(NULL);
    if (now != last_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        if (evutil_date_rfc1123(text, sizeof text, &tm) <= 0)
            return NULL; /* evhttp adds its own */
        last_sec = now;
    }
    return text;
}

static void send_now(struct evhttp_request *req, int code, const char *content_type,
                     const void *body, size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (content_type)
        evhttp_add_header(h, "Content-Type", content_type);
    /* No handler sets a Date of its own. */
    const char *date = date_header_text();
    if (date)
        evhttp_add_header(h, "Date", date);
    /* Straight into the request's own output buffer: evhttp sends that
     * one, and a buffer of our own would be made, copied over and freed
     * for every answer. */
    if (body && len)
        evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
    const char *reason = code == 200   ? "OK"
                         : code == 201 ? "Created"
                         : code == 207 ? "Multi-Status"
                         : code == 303 ? "See Other"
                         : code == 400 ? "Bad Request"
                         : code == 401 ? "Unauthorized"
                         : code == 403 ? "Forbidden"
                         : code == 404 ? "Not Found"
                         : code == 405 ? "Method Not Allowed"
                         : code == 409 ? "Conflict"
                         : code == 410 ? "Gone"
                         : code == 413 ? "Payload Too Large"
                         : code == 415 ? "Unsupported Media Type"
                         : code == 429 ? "Too Many Requests"
                         : code == 503 ? "Service Unavailable"
                         : code >= 500 ? "Internal Server Error"
                                       : "Status";
    evhttp_send_reply(req, code, reason, NULL);
}

/* ---- batching and group commit ---------------------------------------------------
 * (group and normal modes) The store's operations of one loop turn form one
 * batch, committed by a zero-delay timer after that turn's I/O; answers are
 * held until their batch is committed and, in group mode, until a store
 * sync that began after it has finished: nothing a device or an admin is
 * told can be undone by a crash, or (group mode) by a power cut. The sync
 * (for SQLite, one fsync of its log) runs on a thread while the loop keeps
 * serving; everything answered meanwhile shares the next sync, so throughput
 * follows the CPU, not the disk's fsync latency. Both halves depend on what
 * the back end declares (ESIM_STORE_FEATURE_BATCH, _DEFERRED_SYNC). */

/* ---- the store's health ------------------------------------------------------------ */

void svc_store_failed(esim_service *svc, const char *reason)
{
    svc->m.store_errors++;
    svc->store_failures++;
    if (svc->store_failing)
        return;
    svc->store_failing = true;
    if ((!reason || !*reason) && svc->st)
        reason = esim_store_last_error(svc->st); /* the caller had no words */
    char shown[300];
    snprintf(shown, sizeof shown, "%.*s", (int)sizeof shown - 1,
             reason && *reason ? reason : "unknown");
    svc_utf8_sanitize(shown);
    svc_log(svc, ESIM_LOG_ERROR, "store_failing", "store",
            svc->st ? esim_store_backend(svc->st) : NULL, "reason", shown, NULL);
}

void svc_store_ok(esim_service *svc)
{
    if (!svc->store_failing)
        return;
    char n[24];
    snprintf(n, sizeof n, "%llu", (unsigned long long)svc->store_failures);
    svc_log(svc, ESIM_LOG_INFO, "store_recovered", "failures", n, NULL);
    svc->store_failing = false;
    svc->store_failures = 0;
}

/* Whether |req| changes something (a store write when answered 2xx). */
static bool is_write(struct evhttp_request *req)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    return m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD;
}

/* The answer to every request whose batch could not be committed (or made
 * durable): nothing of it was kept, so the client may send it again. */
#define STORE_UNAVAILABLE_WORDS                                                                    \
    "the store could not commit this request (the disk may be full or the database "               \
    "unavailable); nothing of it was kept: try again later"

static void send_store_unavailable(struct evhttp_request *req, bool json)
{
    static const char text[] = STORE_UNAVAILABLE_WORDS "\n";
    static const char body[] =
        "{\"error\":{\"status\":503,\"message\":\"" STORE_UNAVAILABLE_WORDS "\"}}\n";
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "5");
    if (json)
        send_now(req, 503, "application/json", body, sizeof body - 1);
    else
        send_now(req, 503, "text/plain; charset=utf-8", text, sizeof text - 1);
}

static void send_batch(esim_service *svc, svc_reply *r, bool ok)
{
    while (r) {
        svc_reply *next = r->next;
        if (r->held) { /* its refill job has it, and sends it (mdm_refill_answers) */
            r = next;
            continue;
        }
        if (ok) {
            if (r->code < 300 && is_write(r->req))
                svc_store_ok(svc);
            send_now(r->req, r->code, r->content_type, r->body.data, r->body.len);
        } else {
            send_store_unavailable(
                r->req, r->content_type && strncmp(r->content_type, "application/json", 16) == 0);
        }
        esim_buf_free(&r->body);
        free(r);
        r = next;
    }
}

void svc_reply_send(esim_service *svc, svc_reply *r)
{
    r->held = false;
    r->next = NULL;
    send_batch(svc, r, true);
}

static void free_replies(svc_reply *r)
{
    while (r) {
        svc_reply *next = r->next;
        esim_buf_free(&r->body);
        free(r);
        r = next;
    }
}

static void *sync_main(void *arg)
{
    esim_service *svc = arg;
    pthread_mutex_lock(&svc->sync_mu);
    for (;;) {
        while (!svc->sync_requested && !svc->sync_quit)
            pthread_cond_wait(&svc->sync_cv, &svc->sync_mu);
        if (svc->sync_quit)
            break;
        svc->sync_requested = false;
        pthread_mutex_unlock(&svc->sync_mu);
        esim_err rc = esim_store_sync(svc->st, NULL);
        pthread_mutex_lock(&svc->sync_mu);
        svc->sync_result = rc;
        ssize_t w = write(svc->sync_pipe[1], "s", 1);
        (void)w;
    }
    pthread_mutex_unlock(&svc->sync_mu);
    return NULL;
}

static void free_deferred(esim_service *svc, svc_deferred *d)
{
    while (d) {
        svc_deferred *next = d->next;
        if (d->omadm)
            omadm_held_release(svc, d->omadm);
        if (d->free_ctx)
            d->free_ctx(d->ctx);
        webhooks_discard(d->hooks);
        esim_msg_free(&d->msg);
        free(d);
        d = next;
    }
}

static void run_after_commit(esim_service *svc, esim_msg *msg, hook_job *hooks, bool hook,
                             bool held)
{
    webhooks_launch(svc, hooks);
    if (hook) {
        esim_service_result r = {msg->udid,
                                 msg->command_uuid,
                                 esim_status_name(msg->status),
                                 msg,
                                 "apple",
                                 NULL,
                                 0,
                                 held,
                                 NULL};
        svc_run_result_hooks(svc, &r);
    }
}

/* Puts |d| at the end of the list the next batch's commit runs. */
static void defer_append(esim_service *svc, svc_deferred *d)
{
    *svc->deferred_tail = d;
    svc->deferred_tail = &d->next;
}

void svc_after_commit(esim_service *svc, esim_msg *msg, const void *raw, size_t len,
                      const svc_event_extra *x, bool hook, svc_reply *refill, const char *cert)
{
    /* The webhook outbox rows join the batch of the change they report. */
    svc_after_commit_written(svc, msg, webhooks_prepare(svc, msg, raw, len, x), hook, refill, cert);
}

void svc_after_commit_written(esim_service *svc, esim_msg *msg, hook_job *hooks, bool hook,
                              svc_reply *refill, const char *cert)
{
    /* Nothing waits for the commit (no webhook, no result hook, no answer
     * to refill: every Idle and check-in without webhooks): no entry, and
     * no copy of the message, in the batch's list. */
    if (!hooks && !hook && !refill)
        return;
    /* Answers are sent at once (no group commit): nothing to wait for. */
    if (!svc->batch_open && !svc->flush_ev) {
        run_after_commit(svc, msg, hooks, hook, false);
        return;
    }
    svc_deferred *d = calloc(1, sizeof *d);
    if (!d) {
        run_after_commit(svc, msg, hooks, hook, false); /* out of memory: early beats never */
        return;
    }
    d->msg = *msg;
    memset(msg, 0, sizeof *msg);
    d->hook = hook;
    d->hooks = hooks;
    if (hook && refill) {
        d->refill = refill;
        snprintf(d->cert_sha256, sizeof d->cert_sha256, "%s", cert ? cert : "");
    }
    defer_append(svc, d);
}

/* |fn| after the commit when |wait| (a batch to wait for), else at once; at
 * once as well out of memory: early beats never. */
static void defer_call(esim_service *svc, bool wait, bool result,
                       void (*fn)(esim_service *, void *), void *ctx, void (*free_ctx)(void *))
{
    svc_deferred *d = wait ? calloc(1, sizeof *d) : NULL;
    if (!d) {
        fn(svc, ctx);
        if (free_ctx)
            free_ctx(ctx);
        return;
    }
    d->fn = fn;
    d->ctx = ctx;
    d->free_ctx = free_ctx;
    d->result = result;
    defer_append(svc, d);
}

void svc_after_commit_call(esim_service *svc, void (*fn)(esim_service *, void *), void *ctx,
                           void (*free_ctx)(void *))
{
    defer_call(svc, svc->batch_open, false, fn, ctx, free_ctx);
}

void svc_batch_open(esim_service *svc)
{
    if (svc->batch_open || !svc->flush_ev ||
        !(esim_store_features(svc->st) & ESIM_STORE_FEATURE_BATCH))
        return;
    if (esim_store_batch_begin(svc->st, NULL) != ESIM_OK) {
        svc_store_failed(svc, NULL); /* operations then run as transactions of their own */
        return;
    }
    svc->batch_open = true;
    if (!svc->sync_busy && !evtimer_pending(svc->flush_ev, NULL)) {
        struct timeval now = {0, 0};
        evtimer_add(svc->flush_ev, &now);
    }
}

void svc_after_commit_result(esim_service *svc, void (*fn)(esim_service *, void *), void *ctx,
                             void (*free_ctx)(void *))
{
    /* Held while answers are (group commit), even between batches. */
    defer_call(svc, svc->batch_open || svc->flush_ev, true, fn, ctx, free_ctx);
}

bool svc_after_commit_refill(esim_service *svc, const char *udid, svc_reply *r, struct omadm_job *j)
{
    if (!r || (!svc->batch_open && !svc->flush_ev))
        return false;
    svc_deferred *d = calloc(1, sizeof *d);
    if (!d)
        return false;
    snprintf(d->msg.udid, sizeof d->msg.udid, "%s", udid);
    d->refill = r;
    d->omadm = j;
    defer_append(svc, d);
    return true;
}

/* Indexes the held answers of |list| by UDID for refill_mark. Out of
 * memory: no index, and those answers simply go without a command. */
static void refill_tab_build(esim_service *svc, svc_deferred *list)
{
    size_t n = 0;
    for (svc_deferred *d = list; d; d = d->next)
        n += d->refill != NULL;
    if (n == 0)
        return;
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    svc->refill_tab = calloc(cap, sizeof *svc->refill_tab);
    if (!svc->refill_tab)
        return;
    svc->refill_cap = cap;
    for (svc_deferred *d = list; d; d = d->next) {
        if (!d->refill)
            continue;
        size_t k = esim_hash_str(d->msg.udid) & (cap - 1);
        while (svc->refill_tab[k])
            k = (k + 1) & (cap - 1);
        svc->refill_tab[k] = d;
    }
}

/* A command was queued for |udid|: if its answer is held in |tab|, it is to
 * carry it. */
static void refill_mark_in(svc_deferred **tab, size_t cap, const char *udid)
{
    for (size_t k = esim_hash_str(udid) & (cap - 1); tab[k]; k = (k + 1) & (cap - 1))
        if (strcmp(tab[k]->msg.udid, udid) == 0)
            tab[k]->refill_wanted = true;
}

/* ---- held answers waiting for a module's store job ------------------------------------ */

struct esim_answer_hold {
    struct esim_answer_hold *next;
    int refs;           /* holds taken and not released */
    svc_deferred *list; /* the batch's results, its held answers among them; NULL while
                         * the results-done hooks still run */
    svc_deferred **tab; /* its held answers by UDID (refill_tab_build) */
    size_t cap;
};

/* Every answer of |h| goes now: with the command queued for its device
 * meanwhile (mdm_refill_answers), or as it is. */
static void hold_finish(esim_service *svc, esim_answer_hold *h)
{
    for (esim_answer_hold **at = &svc->holds; *at; at = &(*at)->next)
        if (*at == h) {
            *at = h->next;
            break;
        }
    /* The answers no refill job will send (the batch's send_batch passed
     * them by), chained through |next|: a Windows session's goes after
     * omadm_refill_answers finished its session's part. */
    svc_reply *now = NULL;
    for (svc_deferred *d = h->list; d; d = d->next) {
        svc_reply *r = d->refill;
        if (!r)
            continue;
        r->held = false;
        if (!d->refill_wanted || !pool_on(svc) || !evhttp_request_get_connection(r->req)) {
            r->next = now;
            now = r;
            if (!d->omadm)
                d->refill = NULL;
        }
    }
    mdm_refill_answers(svc, h->list); /* with a pool: a job per answer, which sends it */
    while (now) {
        svc_reply *next = now->next;
        svc_reply_send(svc, now);
        now = next;
    }
    free_deferred(svc, h->list);
    free(h->tab);
    free(h);
}

esim_answer_hold *esim_service_answers_hold(esim_service *svc)
{
    if (!svc || !svc->in_results_done || !svc->refill_tab || !pool_on(svc))
        return NULL;
    if (!svc->hold_new && !(svc->hold_new = calloc(1, sizeof *svc->hold_new)))
        return NULL; /* out of memory: the answers go as they are */
    svc->hold_new->refs++;
    return svc->hold_new;
}

void esim_service_answers_release(esim_service *svc, esim_answer_hold *h)
{
    if (!svc || !h || --h->refs > 0)
        return;
    if (h->list) /* else its batch is still running its hooks: it finishes as usual */
        hold_finish(svc, h);
}

/* After the results-done hooks of |list|: when a hook holds its answers,
 * they wait out of the batch's replies (and |list| is the hold's). */
static bool hold_take(esim_service *svc, svc_deferred *list)
{
    esim_answer_hold *h = svc->hold_new;
    svc->hold_new = NULL;
    if (!h)
        return false;
    if (h->refs == 0) { /* released already */
        free(h);
        return false;
    }
    h->list = list;
    h->tab = svc->refill_tab;
    h->cap = svc->refill_cap;
    svc->refill_tab = NULL;
    svc->refill_cap = 0;
    for (svc_deferred *d = list; d; d = d->next)
        if (d->refill)
            d->refill->held = true; /* send_batch passes it by */
    h->next = svc->holds;
    svc->holds = h;
    return true;
}

/* Commits the open batch, then lets the webhooks and result hooks it held
 * back go, then the results-done hooks, and puts the next command the
 * hooks queued for a device in its held answer. False when the commit
 * failed (the batch is undone). */
static bool batch_finish(esim_service *svc)
{
    bool ok = true;
    if (svc->batch_open) { /* else each operation committed on its own */
        svc->batch_open = false;
        esim_error e = {{0}};
        ok = esim_store_batch_commit(svc->st, &e) == ESIM_OK;
        if (!ok)
            svc_store_failed(svc, e.msg);
    }
    svc_deferred *list = svc->deferred;
    svc->deferred = NULL;
    svc->deferred_tail = &svc->deferred;
    if (!list)
        return ok;
    bool results = false;
    if (ok)
        refill_tab_build(svc, list);
    for (svc_deferred *d = list; ok && d; d = d->next) {
        if (d->fn) {
            d->fn(svc, d->ctx);
            results |= d->result;
        } else {
            run_after_commit(svc, &d->msg, d->hooks, d->hook, d->refill != NULL);
            d->hooks = NULL;
            results |= d->hook;
        }
    }
    svc->in_results_done = ok;
    for (size_t i = 0; results && i < svc->n_results_done; i++)
        svc->results_done[i].fn(svc, svc->results_done[i].arg);
    svc->in_results_done = false;
    if (hold_take(svc, list))
        return ok;
    free(svc->refill_tab);
    svc->refill_tab = NULL;
    svc->refill_cap = 0;
    if (ok)
        mdm_refill_answers(svc, list);
    free_deferred(svc, list);
    return ok;
}

/* Commits the batch, then starts a sync for every answer waiting, or sends
 * them at once when nothing was committed since the last sync. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    esim_service *svc = arg;
    if (svc->sync_busy)
        return;
    bool committed = batch_finish(svc);
    if (!svc->replies)
        return;
    svc_reply *batch = svc->replies;
    svc->replies = NULL;
    svc->replies_tail = &svc->replies;
    if (!committed) {
        send_batch(svc, batch, false);
        return;
    }
    int64_t count = esim_store_commit_count(svc->st);
    /* Nothing new to make durable, or a store that does not defer it
     * (normal mode: batching without the sync; or a back end whose commits
     * are durable when they return). */
    if (count == svc->synced_count || svc->cfg.store_sync == STORE_SYNC_NORMAL ||
        !(esim_store_features(svc->st) & ESIM_STORE_FEATURE_DEFERRED_SYNC)) {
        svc->synced_count = count;
        send_batch(svc, batch, true);
        return;
    }
    svc->syncing = batch;
    svc->syncing_count = count;
    svc->sync_busy = true;
    pthread_mutex_lock(&svc->sync_mu);
    svc->sync_requested = true;
    pthread_cond_signal(&svc->sync_cv);
    pthread_mutex_unlock(&svc->sync_mu);
}

static void on_sync_done(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    esim_service *svc = arg;
    char buf[16];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    pthread_mutex_lock(&svc->sync_mu);
    bool ok = svc->sync_result == ESIM_OK;
    pthread_mutex_unlock(&svc->sync_mu);
    if (ok)
        svc->synced_count = svc->syncing_count;
    else
        svc_store_failed(svc, "the store could not make its commits durable (sync failed)");
    svc_reply *batch = svc->syncing;
    svc->syncing = NULL;
    svc->sync_busy = false;
    /* The next batch's commit and its sync first, then these answers:
     * writing an answer out (evhttp's status line and headers) costs
     * about 15,000 instructions, and the sync thread would wait for all
     * of them before its fdatasync, the step a check-in's round trip waits
     * on most (docs/scaling.md, "Check-in round trips"). */
    if (svc->replies || svc->batch_open)
        on_flush(-1, 0, svc);
    send_batch(svc, batch, ok);
}

static esim_err group_commit_start(esim_service *svc, esim_error *err)
{
    if (svc->cfg.store_sync == STORE_SYNC_FULL)
        return ESIM_OK;
    if (pipe2(svc->sync_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
        return esim_fail(err, ESIM_EIO, "pipe: %s", strerror(errno));
    svc->flush_ev = evtimer_new(svc->base, on_flush, svc);
    svc->sync_done_ev =
        event_new(svc->base, svc->sync_pipe[0], EV_READ | EV_PERSIST, on_sync_done, svc);
    if (!svc->flush_ev || !svc->sync_done_ev)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    event_add(svc->sync_done_ev, NULL);
    svc->synced_count = esim_store_commit_count(svc->st);
    if (svc->cfg.store_sync != STORE_SYNC_GROUP)
        return ESIM_OK;
    if (pthread_create(&svc->sync_thread, NULL, sync_main, svc) != 0)
        return esim_fail(err, ESIM_EIO, "cannot start the store sync thread");
    svc->sync_thread_started = true;
    return ESIM_OK;
}

static void group_commit_stop(esim_service *svc)
{
    if (svc->sync_thread_started) {
        pthread_mutex_lock(&svc->sync_mu);
        svc->sync_quit = true;
        pthread_cond_signal(&svc->sync_cv);
        pthread_mutex_unlock(&svc->sync_mu);
        pthread_join(svc->sync_thread, NULL);
        svc->sync_thread_started = false;
    }
    /* The uncommitted batch is undone: nobody was told of it, and devices
     * whose answers it held will send them again. Whatever runs after this
     * (modules shutting down) commits on its own. Unsent answers: their
     * requests belong to connections evhttp_free closes. */
    if (svc->batch_open && svc->st)
        esim_store_batch_rollback(svc->st);
    else /* committed one by one (no batching): the hooks still hear of them */
        for (svc_deferred *d = svc->deferred; d; d = d->next) {
            if (d->fn)
                d->fn(svc, d->ctx);
            else
                run_after_commit(svc, &d->msg, d->hooks, d->hook, false);
            d->hooks = NULL;
        }
    svc->batch_open = false;
    free_deferred(svc, svc->deferred);
    svc->deferred = NULL;
    svc->deferred_tail = &svc->deferred;
    free_replies(svc->replies);
    free_replies(svc->syncing);
    svc->replies = svc->syncing = NULL;
    svc->replies_tail = &svc->replies;
    if (svc->flush_ev)
        event_free(svc->flush_ev);
    if (svc->sync_done_ev)
        event_free(svc->sync_done_ev);
    svc->flush_ev = svc->sync_done_ev = NULL;
    for (int i = 0; i < 2; i++)
        if (svc->sync_pipe[i] >= 0)
            close(svc->sync_pipe[i]);
    svc->sync_pipe[0] = svc->sync_pipe[1] = -1;
}

/* The access log's line for one answer: never the query (it is not for
 * secrets, but nobody should have to check) nor any header. */
static void log_access(esim_service *svc, struct evhttp_request *req, int code, size_t len)
{
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    char peer[48], status[21], bytes[21];
    access_peer(req, peer);
    /* Every answer writes this line: no formatted prints in it. */
    esim_format_u64(status, code > 0 ? (uint64_t)code : 0);
    esim_format_u64(bytes, len);
    const char *who =
        svc->audit && svc->audit->req == req && svc->audit->who[0] ? svc->audit->who : NULL;
    const char *udid = svc->dev_req == req && svc->dev_udid[0] ? svc->dev_udid : NULL;
    char shown[256];
    esim_copy_text(shown, sizeof shown, path ? path : "?");
    svc_log(svc, ESIM_LOG_INFO, "access", "method",
            access_method_name(evhttp_request_get_command(req)), "path", shown, "status", status,
            "bytes", bytes, "peer", peer[0] ? peer : NULL, "key", who, "udid", udid, NULL);
}

/* http_reply and http_reply_take: the answer of |req| counted and logged,
 * then sent (NULL) or held for the group commit (its record, |body| moved
 * into it when |take|, copied otherwise). */
static svc_reply *reply(esim_service *svc, struct evhttp_request *req, int route, int code,
                        const char *content_type, esim_buf *body, bool take)
{
    int cls = code >= 500 ? M_CODE_5XX : code >= 400 ? M_CODE_4XX : M_CODE_2XX;
    svc->m.requests[route][cls]++;
    access_audit_note(svc, req, code, NULL);
    if (svc->cfg.access_log && svc_log_on(svc, ESIM_LOG_INFO))
        log_access(svc, req, code, body->len);
    if (!svc->flush_ev) {
        if (code < 300 && is_write(req))
            svc_store_ok(svc); /* committed on its own already */
        send_now(req, code, content_type, body->data, body->len);
        if (take)
            esim_buf_free(body);
        return NULL;
    }
    svc_reply *r = calloc(1, sizeof *r);
    if (r && take) {
        r->body = *body;
        memset(body, 0, sizeof *body);
    }
    if (!r || (!take && body->len && esim_buf_append(&r->body, body->data, body->len) != ESIM_OK)) {
        free(r);
        if (take)
            esim_buf_free(body);
        send_now(req, 503, "text/plain", "out of memory\n", 14);
        return NULL;
    }
    r->req = req;
    r->code = code;
    r->content_type = content_type;
    *svc->replies_tail = r;
    svc->replies_tail = &r->next;
    if (!svc->sync_busy && !evtimer_pending(svc->flush_ev, NULL)) {
        struct timeval now = {0, 0}; /* after this loop turn's I/O */
        evtimer_add(svc->flush_ev, &now);
    }
    return r;
}

svc_reply *http_reply(esim_service *svc, struct evhttp_request *req, int route, int code,
                      const char *content_type, const void *body, size_t len)
{
    esim_buf view = {.data = (unsigned char *)body, .len = body ? len : 0};
    return reply(svc, req, route, code, content_type, &view, false);
}

svc_reply *http_reply_take(esim_service *svc, struct evhttp_request *req, int route, int code,
                           const char *content_type, esim_buf *body)
{
    return reply(svc, req, route, code, content_type, body, true);
}

const unsigned char *http_body(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(in);
    if (*len == 0)
        return NULL;
    return evbuffer_pullup(in, -1);
}

bool http_secret_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return false;
    return CRYPTO_memcmp(a, b, la) == 0;
}

/* ---- requests ---------------------------------------------------------------------- */

static bool is_device_path(const esim_service *svc, const char *path)
{
    (void)svc;
    return strcmp(path, "/mdm") == 0 || strcmp(path, "/checkin") == 0;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    esim_service *svc = arg;
    log_on_loop(svc);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!conn_request_started(svc, req))
        return;
    /* The body limit is checked here rather than by evhttp, whose refusal
     * is an HTML page (conn.c refuses a body announced too big earlier). */
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > svc->cfg.max_body) {
        static const char body[] = "{\"error\":{\"status\":413,\"message\":\"the body is over "
                                   "the size limit (max-body)\"}}\n";
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        http_reply(svc, req,
                   path && (is_device_path(svc, path) || strcmp(path, OMADM_PATH) == 0)
                       ? M_ROUTE_MDM
                       : M_ROUTE_API,
                   413, "application/json", body, sizeof body - 1);
        return;
    }
    svc_batch_open(svc);
    if (path && is_device_path(svc, path)) {
        svc->dev_req = req;
        svc->dev_udid[0] = '\0';
        mdm_handle(svc, req);
        svc->dev_req = NULL;
    } else if (path && strcmp(path, OMADM_PATH) == 0) {
        omadm_handle(svc, req);
    } else if (path && strcmp(path, EIM_PATH) == 0) {
        eim_handle(svc, req);
    } else {
        api_dispatch(svc, req);
    }
}

/* Every connection's bufferevent is made here, so each one is admitted (or
 * refused) and given its deadlines (conn.c); TLS when the service has a
 * certificate. */
static struct bufferevent *new_bev(struct event_base *base, void *arg)
{
    (void)base;
    return conn_new_bufferevent(arg);
}

/* A server TLS context from |cert_path| and |key_path|, asking clients for
 * a certificate from |client_ca_path| when device auth needs one. */
static esim_err tls_ctx_build(esim_service *svc, const char *cert_path, const char *key_path,
                              const char *client_ca_path, SSL_CTX **out, esim_error *err)
{
    *out = NULL;
    esim_cert cert = {0};
    esim_err rc = esim_cert_load(cert_path, key_path, &cert, err);
    if (rc != ESIM_OK)
        return rc;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, cert.key) != 1 || !esim_tls_server_chain(ctx)) {
        esim_cert_clear(&cert);
        SSL_CTX_free(ctx);
        ERR_clear_error();
        return esim_fail(err, ESIM_ECRYPTO, "cannot use TLS certificate %s with key %s", cert_path,
                         key_path);
    }
    esim_cert_clear(&cert);
    /* Windows devices always prove who they are by their TLS client
     * certificate; Apple devices do with --device-auth mtls. Asked for,
     * never required: a client without one still connects. */
    if (svc->cfg.device_auth != ESIM_DEVICE_AUTH_NONE) {
        /* Client certificates are asked for and taken as they come: the
         * chain to the device CA is checked by auth_tls_verify, which never
         * fails the handshake (a device with a bad certificate gets an
         * HTTP 403 it can log, per request). Sessions resume from this
         * process's table (stateful tickets: SSL_OP_NO_TICKET, one per
         * handshake): a client without a certificate (an iPhone that
         * signs its messages) as with any web server; one with a
         * certificate only from a handshake that verified it, for a
         * bounded time, and without decoding its certificate again (auth.c;
         * docs/security.md). The session ID context is needed once client
         * certificates are asked for. */
        if (!svc->tls_sessions && !(svc->tls_sessions = tls_sessions_new(AUTH_SESSIONS_MAX))) {
            SSL_CTX_free(ctx);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        SSL_CTX_set_app_data(ctx, svc);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_cert_verify_callback(ctx, auth_tls_verify, svc);
        SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"esim-mdm", 8);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 1);
        SSL_CTX_set_timeout(ctx, AUTH_SESSION_TIMEOUT_S);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
        SSL_CTX_sess_set_new_cb(ctx, auth_tls_session_new);
        SSL_CTX_sess_set_get_cb(ctx, auth_tls_session_get);
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca_path);
        if (names)
            SSL_CTX_set_client_CA_list(ctx, names);
        ERR_clear_error();
    }
    *out = ctx;
    return ESIM_OK;
}

static esim_err tls_setup(esim_service *svc, esim_error *err)
{
    if (!svc->tls_cert_path != !svc->tls_key_path)
        return esim_fail(err, ESIM_EINVAL, "--tls-cert and --tls-key go together");
    if (!svc->tls_cert_path) {
        if (svc->cfg.device_auth == ESIM_DEVICE_AUTH_MTLS)
            return esim_fail(err, ESIM_EINVAL,
                             "--device-auth mtls needs TLS: give --tls-cert and --tls-key");
        return ESIM_OK;
    }
    return tls_ctx_build(svc, svc->tls_cert_path, svc->tls_key_path, svc->device_ca_path, &svc->tls,
                         err);
}

/* "IPv4:PORT" or "[IPv6]:PORT" split into host and port. */
static esim_err parse_listen(const char *listen, char *host, size_t host_len, int *port,
                             esim_error *err)
{
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen)
        return esim_fail(err, ESIM_EINVAL,
                         "bad listen address '%s': use ADDR:PORT, as 127.0.0.1:8080", listen);
    const char *h = listen;
    size_t hl = (size_t)(colon - listen);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535 || hl == 0 || hl >= host_len)
        return esim_fail(err, ESIM_EINVAL,
                         "bad listen address '%s': use ADDR:PORT, as 127.0.0.1:8080", listen);
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (strcmp(host, "localhost") == 0)
        snprintf(host, host_len, "127.0.0.1");
    unsigned char probe[16];
    if (inet_pton(AF_INET, host, probe) != 1 && inet_pton(AF_INET6, host, probe) != 1)
        return esim_fail(err, ESIM_EINVAL,
                         "bad listen address '%s': the host must be an IP address "
                         "(or localhost)",
                         listen);
    *port = (int)p;
    return ESIM_OK;
}

static esim_err http_setup(esim_service *svc, esim_error *err)
{
    char host[64];
    int port = 0;
    esim_err rc = parse_listen(svc->listen, host, sizeof host, &port, err);
    if (rc != ESIM_OK)
        return rc;
    svc->http = evhttp_new(svc->base);
    if (!svc->http)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    evhttp_set_gencb(svc->http, on_request, svc);
    /* No limit in evhttp: on_request and conn.c apply --max-body (a
     * reload's new value too) and answer JSON; the bytes a request can hold
     * are capped by conn.c's pending-bytes limits whatever it announces. */
    evhttp_set_max_body_size(svc->http, -1);
    evhttp_set_max_headers_size(svc->http, 64 * 1024);
    evhttp_set_timeout(svc->http, 60);
    /* Every method reaches the routes, which answer 405 (JSON, with Allow)
     * to one they do not take; evhttp's own refusal is an HTML 501. */
    evhttp_set_allowed_methods(svc->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                              EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS |
                                              EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
    evhttp_set_bevcb(svc->http, new_bev, svc);
    if ((rc = conn_setup(svc, err)) != ESIM_OK)
        return rc;
    svc->bound = evhttp_bind_socket_with_handle(svc->http, host, (ev_uint16_t)port);
    if (!svc->bound)
        return esim_fail(err, ESIM_EIO, "cannot listen on %s: %s", svc->listen, strerror(errno));
    conn_listener_ready(svc);
    /* Without Nagle: over TLS an answer is several writes (a record for
     * the header, one for the body, a session ticket before them), and
     * with Nagle the second waits for the client's delayed ACK of the
     * first, about 40 ms on Linux, on every answer (issue 17: an mtls
     * campaign spent most of its time there). Set once here: Linux gives
     * every accepted socket the listening socket's TCP_NODELAY, which
     * saves a setsockopt per connection. */
    int one = 1;
    if (setsockopt(evhttp_bound_socket_get_fd(svc->bound), IPPROTO_TCP, TCP_NODELAY, &one,
                   sizeof one) != 0)
        return esim_fail(err, ESIM_EIO, "cannot set TCP_NODELAY on %s: %s", svc->listen,
                         strerror(errno));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(evhttp_bound_socket_get_fd(svc->bound), (struct sockaddr *)&ss, &sl) != 0)
        return esim_fail(err, ESIM_EIO, "cannot read the bound port: %s", strerror(errno));
    svc->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    bool v6 = strchr(host, ':') != NULL;
    snprintf(svc->url, sizeof svc->url, "%s://%s%s%s:%d", svc->tls ? "https" : "http",
             v6 ? "[" : "", host, v6 ? "]" : "", svc->port);
    return ESIM_OK;
}

/* ---- housekeeping ---------------------------------------------------------------- */

/* The tick's store half: expiry (a command past its expiry is never
 * delivered; made final) and the pushes owed (devices that said NotNow,
 * woken after their back-off). With a store pool it runs on a worker (an
 * admin job: at most half of them) and its pushes go out on the loop when
 * it is back; one at a time, a tick finding it still running skips it. */
typedef struct {
    pool_job job; /* first: the pool's view of it */
    int64_t now;
    esim_err expire_rc, due_rc;
    char due[64][65];
    store_push_target *targets; /* n_due of them, read with the list on the worker */
    bool have_target[64];
    size_t n_due;
} tick_job;

static void tick_run(store *st, pool_job *pj)
{
    tick_job *j = (tick_job *)pj;
    j->expire_rc = esim_store_expire(st, j->now, NULL, NULL);
    j->due_rc = esim_store_push_due(st, j->now, j->due, 64, &j->n_due, NULL);
    if (j->due_rc == ESIM_OK && j->n_due > 0)
        j->targets = calloc(j->n_due, sizeof *j->targets);
    for (size_t i = 0; j->targets && i < j->n_due; i++)
        j->have_target[i] = esim_store_push_target(st, j->due[i], &j->targets[i], NULL) == ESIM_OK;
}

static void tick_done(esim_service *svc, pool_job *pj)
{
    tick_job *j = (tick_job *)pj;
    svc->tick_busy = false;
    if (pj->ran) { /* else the service is stopping: nothing was done */
        if (j->expire_rc != ESIM_OK)
            svc_store_failed(svc, NULL);
        if (j->due_rc != ESIM_OK)
            svc_store_failed(svc, NULL);
        for (size_t i = 0; i < j->n_due; i++) {
            if (j->have_target[i])
                push_send(svc, &j->targets[i], NULL, NULL, NULL);
            else if (!j->targets)
                push_later(svc, j->due[i]); /* out of memory on the worker */
        }
    }
    free(j->targets);
    free(j);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    esim_service *svc = arg;
    int64_t now = esim_now_ms();
    tick_job *tj = svc->tick_busy ? NULL : calloc(1, sizeof *tj);
    if (tj) {
        tj->job.run = tick_run;
        tj->job.done = tick_done;
        tj->job.admin = true;
        tj->now = now;
        svc->tick_busy = true;
        pool_run(svc, &tj->job);
    }
    mdm_prune_buckets(svc, now);
    replay_prune(svc, now);
    omadm_tick(svc, now);
    conn_tick(svc);
    notify_tick(svc, now);
    webhooks_tick(svc, now);
    for (size_t i = 0; i < svc->n_ticks; i++)
        svc->ticks[i].fn(svc, now, svc->ticks[i].arg);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    esim_service *svc = arg;
    char buf[16];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    event_base_loopexit(svc->base, NULL);
}

void esim_service_request_stop(esim_service *svc)
{
    if (svc && svc->stop_pipe[1] >= 0) {
        ssize_t w = write(svc->stop_pipe[1], "x", 1);
        (void)w;
    }
}

/* ---- life cycle ---------------------------------------------------------------------- */

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s || !*s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

static esim_err copy_config(esim_service *svc, const esim_service_config *cfg, esim_error *err)
{
    bool oom = false;
    svc->cfg = *cfg;
    svc->listen = dup_or_null(cfg->listen ? cfg->listen : "127.0.0.1:8080", &oom);
    svc->data_dir = dup_or_null(cfg->data_dir, &oom);
    svc->store_spec = dup_or_null(cfg->store, &oom);
    svc->api_token = dup_or_null(cfg->api_token, &oom);
    svc->device_ca_path = dup_or_null(cfg->device_ca_path, &oom);
    svc->tls_cert_path = dup_or_null(cfg->tls_cert_path, &oom);
    svc->tls_key_path = dup_or_null(cfg->tls_key_path, &oom);
    svc->apns_url = dup_or_null(cfg->apns_url, &oom);
    svc->apns_cert_path = dup_or_null(cfg->apns_cert_path, &oom);
    svc->apns_key_path = dup_or_null(cfg->apns_key_path, &oom);
    svc->apns_ca_path = dup_or_null(cfg->apns_ca_path, &oom);
    svc->apns_topic = dup_or_null(cfg->apns_topic, &oom);
    svc->cert_header = dup_or_null(cfg->cert_header ? cfg->cert_header : "Client-Cert", &oom);
    svc->webhook_secret = dup_or_null(cfg->webhook_secret, &oom);
    svc->wns_token_url = dup_or_null(cfg->wns_token_url, &oom);
    svc->wns_client_id = dup_or_null(cfg->wns_client_id, &oom);
    svc->wns_secret_path = dup_or_null(cfg->wns_secret_path, &oom);
    svc->wns_ca_path = dup_or_null(cfg->wns_ca_path, &oom);
    svc->eim_id = dup_or_null(cfg->eim_id && *cfg->eim_id ? cfg->eim_id : "esim-mdm", &oom);
    svc->eim_key_path = dup_or_null(cfg->eim_key_path, &oom);
    svc->eim_cert_path = dup_or_null(cfg->eim_cert_path, &oom);
    svc->euicc_ci_path = dup_or_null(cfg->euicc_ci_path, &oom);
    svc->eim_smdp_ca_path = dup_or_null(cfg->eim_smdp_ca_path, &oom);
    if (cfg->n_webhook_urls) {
        svc->webhook_urls = calloc(cfg->n_webhook_urls, sizeof *svc->webhook_urls);
        if (!svc->webhook_urls)
            oom = true;
        for (size_t i = 0; svc->webhook_urls && i < cfg->n_webhook_urls; i++)
            svc->webhook_urls[i] = dup_or_null(cfg->webhook_urls[i], &oom);
    }
    if (oom)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (svc->cfg.max_body == 0)
        svc->cfg.max_body = 1024 * 1024;
    if (svc->cfg.max_depth == 0)
        svc->cfg.max_depth = 32;
    if (svc->cfg.device_rate <= 0)
        svc->cfg.device_rate = 20;
    if (svc->cfg.device_burst == 0)
        svc->cfg.device_burst = 40;
    if (svc->cfg.tick_ms <= 0)
        svc->cfg.tick_ms = 1000;
    if (svc->cfg.not_now_backoff_ms <= 0)
        svc->cfg.not_now_backoff_ms = 30000;
    if (svc->cfg.replay_window_ms == 0)
        svc->cfg.replay_window_ms = 600000;
    if (svc->cfg.windows_max_messages == 0)
        svc->cfg.windows_max_messages = 64;
    if (svc->cfg.windows_max_session_bytes == 0)
        svc->cfg.windows_max_session_bytes = 16 * svc->cfg.max_body;
    if (svc->cfg.windows_verify_interval_ms <= 0)
        svc->cfg.windows_verify_interval_ms = 30000;
    if (svc->cfg.windows_verify_timeout_ms <= 0)
        svc->cfg.windows_verify_timeout_ms = 900000;
    if (svc->cfg.wns_max_attempts <= 0)
        svc->cfg.wns_max_attempts = 4;
    if (svc->cfg.wns_retry_base_ms <= 0)
        svc->cfg.wns_retry_base_ms = 500;
    if (svc->cfg.wns_timeout_ms <= 0)
        svc->cfg.wns_timeout_ms = 10000;
    return ESIM_OK;
}

static esim_err start(esim_service *svc, esim_error *err)
{
    log_setup(svc);
    esim_err rc = access_init(svc, err);
    svc->cfg.api_keys = NULL; /* the caller's: copied by access_init */
    svc->cfg.n_api_keys = 0;
    if (rc != ESIM_OK)
        return rc;
    if (svc->cfg.device_auth != ESIM_DEVICE_AUTH_NONE) {
        if (!svc->device_ca_path)
            return esim_fail(err, ESIM_EINVAL,
                             "device auth '%s' needs --device-ca PEM (the CA that issues device "
                             "identity certificates), or --device-auth none for local experiments",
                             svc->cfg.device_auth == ESIM_DEVICE_AUTH_MTLS     ? "mtls"
                             : svc->cfg.device_auth == ESIM_DEVICE_AUTH_HEADER ? "header"
                                                                               : "signature");
        if ((rc = auth_load_ca_file(svc->device_ca_path, "device CA", &svc->device_ca, err)) !=
            ESIM_OK)
            return rc;
    }
    if ((rc = tls_setup(svc, err)) != ESIM_OK)
        return rc;
    store_options so = {.sync = svc->cfg.store_sync};
    if ((rc = esim_store_open(svc->store_spec, svc->data_dir, &so, &svc->st, err)) != ESIM_OK)
        return rc;
    notify_start(svc);
    if ((rc = push_init(svc, err)) != ESIM_OK)
        return rc;
    if ((rc = webhooks_init(svc, err)) != ESIM_OK)
        return rc;
    if ((rc = omadm_init(svc, err)) != ESIM_OK)
        return rc;
    if ((rc = wns_init(svc, err)) != ESIM_OK)
        return rc;
    if ((rc = eim_init(svc, err)) != ESIM_OK)
        return rc;
    if ((rc = group_commit_start(svc, err)) != ESIM_OK)
        return rc;
    if ((rc = pool_start(svc, err)) != ESIM_OK)
        return rc;
    if ((rc = http_setup(svc, err)) != ESIM_OK)
        return rc;
    if (pipe2(svc->stop_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
        return esim_fail(err, ESIM_EIO, "pipe: %s", strerror(errno));
    svc->stop_ev = event_new(svc->base, svc->stop_pipe[0], EV_READ | EV_PERSIST, on_stop, svc);
    svc->tick_ev = event_new(svc->base, -1, EV_PERSIST, on_tick, svc);
    if (!svc->stop_ev || !svc->tick_ev)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    struct timeval tv = {svc->cfg.tick_ms / 1000, (svc->cfg.tick_ms % 1000) * 1000};
    event_add(svc->stop_ev, NULL);
    event_add(svc->tick_ev, &tv);
    svc->started_ms = esim_now_ms();
    svc_log(svc, ESIM_LOG_INFO, "started", "url", svc->url, "device_auth",
            svc->cfg.device_auth == ESIM_DEVICE_AUTH_MTLS   ? "mtls"
            : svc->cfg.device_auth == ESIM_DEVICE_AUTH_NONE ? "none"
                                                            : "signature",
            "apns", svc->apns_url ? "on" : "off", NULL);
    return ESIM_OK;
}

esim_err esim_service_new(struct event_base *base, const esim_service_config *cfg,
                          esim_service **out, esim_error *err)
{
    *out = NULL;
    if (!base || !cfg)
        return esim_fail(err, ESIM_EINVAL, "esim_service_new needs an event base and a config");
    esim_service *svc = calloc(1, sizeof *svc);
    if (!svc)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    svc->base = base;
    svc->stop_pipe[0] = svc->stop_pipe[1] = -1;
    svc->replies_tail = &svc->replies;
    svc->deferred_tail = &svc->deferred;
    svc->sync_pipe[0] = svc->sync_pipe[1] = -1;
    pthread_mutex_init(&svc->sync_mu, NULL);
    pthread_cond_init(&svc->sync_cv, NULL);
    esim_err rc = copy_config(svc, cfg, err);
    if (rc == ESIM_OK)
        rc = start(svc, err);
    if (rc != ESIM_OK) {
        esim_service_free(svc);
        return rc;
    }
    *out = svc;
    return ESIM_OK;
}

void esim_service_free(esim_service *svc)
{
    if (!svc)
        return;
    pool_stop(svc); /* its last answers join the batch group_commit_stop ends */
    group_commit_stop(svc);
    svc->bound = NULL; /* evhttp_free frees the listener before the connections */
    if (svc->http)
        evhttp_free(svc->http); /* closes connections: their records go too */
    conn_forget_all(svc);       /* those evhttp dropped before they were admitted */
    /* Modules close before push: they may still queue and push. */
    while (svc->n_closes > 0) {
        svc->n_closes--;
        svc->closes[svc->n_closes].fn(svc, svc->closes[svc->n_closes].arg);
    }
    api_routes_free(svc);
    push_free(svc);
    wns_free(svc);
    omadm_free(svc);
    eim_free(svc);
    X509_STORE_free(svc->system_store); /* after every connection that used it */
    webhooks_free(svc);
    if (svc->tick_ev)
        event_free(svc->tick_ev);
    if (svc->stop_ev)
        event_free(svc->stop_ev);
    for (int i = 0; i < 2; i++)
        if (svc->stop_pipe[i] >= 0)
            close(svc->stop_pipe[i]);
    replay_free(svc);
    notify_free(svc);
    for (size_t i = 0; i < SVC_BUCKETS; i++)
        for (svc_bucket *b = svc->buckets[i], *next; b; b = next) {
            next = b->next;
            free(b);
        }
    mdm_spare_jobs_free(svc);
    log_free(svc); /* the lines of the last pass (the freeing above may log too) */
    esim_store_close(svc->st);
    pthread_mutex_destroy(&svc->sync_mu);
    pthread_cond_destroy(&svc->sync_cv);
    SSL_CTX_free(svc->tls);
    tls_sessions_free(svc->tls_sessions);
    auth_cache_free(svc);
    X509_STORE_free(svc->device_ca);
    free(svc->listen);
    free(svc->data_dir);
    free(svc->store_spec);
    access_free(svc);
    if (svc->api_token)
        OPENSSL_cleanse(svc->api_token, strlen(svc->api_token));
    free(svc->api_token);
    free(svc->device_ca_path);
    free(svc->tls_cert_path);
    free(svc->tls_key_path);
    free(svc->apns_url);
    free(svc->apns_cert_path);
    free(svc->apns_key_path);
    free(svc->apns_ca_path);
    free(svc->apns_topic);
    free(svc->cert_header);
    free(svc->webhook_secret);
    free(svc->wns_token_url);
    free(svc->wns_client_id);
    free(svc->wns_secret_path);
    free(svc->wns_ca_path);
    free(svc->eim_id);
    free(svc->eim_key_path);
    free(svc->eim_cert_path);
    free(svc->euicc_ci_path);
    free(svc->eim_smdp_ca_path);
    for (size_t i = 0; svc->webhook_urls && i < svc->cfg.n_webhook_urls; i++)
        free(svc->webhook_urls[i]);
    free(svc->webhook_urls);
    free(svc);
}

int esim_service_port(const esim_service *svc)
{
    return svc ? svc->port : 0;
}

const char *esim_service_url(const esim_service *svc)
{
    return svc ? svc->url : "";
}

store *esim_service_store(esim_service *svc)
{
    return svc ? svc->st : NULL;
}

struct event_base *esim_service_base(esim_service *svc)
{
    return svc ? svc->base : NULL;
}

void esim_service_count_store_error(esim_service *svc)
{
    if (svc)
        svc_store_failed(svc, NULL);
}

/* Each kind of hook is an array of {fn, arg} of SVC_MAX_HOOKS slots. */
#define ADD_HOOK(arr, n, f, a)                                                                     \
    do {                                                                                           \
        if (!svc || !(f))                                                                          \
            return ESIM_EINVAL;                                                                    \
        if ((n) == SVC_MAX_HOOKS)                                                                  \
            return ESIM_ETOOBIG;                                                                   \
        (arr)[(n)].fn = (f);                                                                       \
        (arr)[(n)++].arg = (a);                                                                    \
        return ESIM_OK;                                                                            \
    } while (0)

esim_err esim_service_add_result_hook(esim_service *svc, esim_service_result_hook fn, void *arg)
{
    ADD_HOOK(svc->result_hooks, svc->n_result_hooks, fn, arg);
}

esim_err esim_service_add_tick(esim_service *svc, esim_service_tick_fn fn, void *arg)
{
    ADD_HOOK(svc->ticks, svc->n_ticks, fn, arg);
}

esim_err esim_service_add_metrics(esim_service *svc, esim_service_metrics_fn fn, void *arg)
{
    ADD_HOOK(svc->metrics, svc->n_metrics, fn, arg);
}

esim_err esim_service_add_close(esim_service *svc, esim_service_close_fn fn, void *arg)
{
    ADD_HOOK(svc->closes, svc->n_closes, fn, arg);
}

esim_err esim_service_add_notify_hook(esim_service *svc, esim_service_notify_fn fn, void *arg)
{
    ADD_HOOK(svc->notify_hooks, svc->n_notify_hooks, fn, arg);
}

esim_err esim_service_add_results_done(esim_service *svc, esim_service_results_done_fn fn,
                                       void *arg)
{
    ADD_HOOK(svc->results_done, svc->n_results_done, fn, arg);
}

/* Drops the entries of |arr| registered with |a|, keeping the order. */
#define REMOVE_HOOKS(arr, n, a)                                                                    \
    do {                                                                                           \
        size_t kept_ = 0;                                                                          \
        for (size_t i_ = 0; i_ < (n); i_++)                                                        \
            if ((arr)[i_].arg != (a))                                                              \
                (arr)[kept_++] = (arr)[i_];                                                        \
        (n) = kept_;                                                                               \
    } while (0)

void esim_service_remove_hooks(esim_service *svc, void *arg)
{
    if (!svc)
        return;
    REMOVE_HOOKS(svc->result_hooks, svc->n_result_hooks, arg);
    REMOVE_HOOKS(svc->ticks, svc->n_ticks, arg);
    REMOVE_HOOKS(svc->metrics, svc->n_metrics, arg);
    REMOVE_HOOKS(svc->closes, svc->n_closes, arg);
    REMOVE_HOOKS(svc->results_done, svc->n_results_done, arg);
    REMOVE_HOOKS(svc->notify_hooks, svc->n_notify_hooks, arg);
    size_t kept = 0;
    for (size_t i = 0; i < svc->n_routes; i++) {
        if (svc->routes[i].arg == arg)
            free(svc->routes[i].pattern);
        else
            svc->routes[kept++] = svc->routes[i];
    }
    svc->n_routes = kept;
    if (svc->session_fn && svc->session_arg == arg)
        svc->session_fn = NULL;
}

void svc_run_result_hooks(esim_service *svc, const esim_service_result *r)
{
    for (size_t i = 0; i < svc->n_result_hooks; i++)
        svc->result_hooks[i].fn(svc, r, svc->result_hooks[i].arg);
}

/* ---- enqueue and push ---------------------------------------------------------------- */

esim_err svc_enqueue_store(const esim_service *svc, store *st, const void *command_plist,
                           size_t len, const char *const *udids, size_t n,
                           const esim_enqueue_opts *opts, char uuid_out[128], esim_error *err)
{
    esim_parse_limits limits = {svc->cfg.max_body, svc->cfg.max_depth};
    esim_cmd_parsed cmd = {0};
    esim_err rc = esim_cmd_parse(command_plist, len, &limits, &cmd, err);
    if (rc != ESIM_OK)
        return rc == ESIM_ETOOBIG ? rc : ESIM_EINVAL;
    /* Both go into JSON answers, webhooks and the ledger: refused here,
     * before anything is stored or pushed. */
    if (!svc_utf8_valid(cmd.command_uuid) || !svc_utf8_valid(cmd.request_type)) {
        esim_fail(err, ESIM_EINVAL, "the command's %s is not valid UTF-8 text",
                  svc_utf8_valid(cmd.command_uuid) ? "RequestType" : "CommandUUID");
        esim_cmd_parsed_free(&cmd);
        return ESIM_EINVAL;
    }
    store_command_in in = {
        .uuid = cmd.command_uuid,
        .request_type = cmd.request_type,
        .body = command_plist,
        .body_len = len,
        .priority = opts->priority,
        .expires_at = opts->expires_at,
    };
    rc = esim_store_command_enqueue(st, &in, udids, n, esim_now_ms(), err);
    if (rc == ESIM_OK && uuid_out)
        snprintf(uuid_out, 128, "%s", cmd.command_uuid);
    esim_cmd_parsed_free(&cmd);
    return rc;
}

void svc_enqueue_after(esim_service *svc, const char *const *udids, size_t n,
                       const esim_enqueue_opts *opts, const push_read *targets,
                       esim_push_state *pushes)
{
    esim_service_enqueued(svc, udids, n);
    /* One push per device for the whole call: a push only says "check in";
     * the device then drains its queue in one session. */
    for (size_t i = 0; i < n; i++) {
        esim_push_state ps = ESIM_PUSH_SKIPPED;
        if (opts->push && targets)
            push_read_send(svc, &targets[i], &ps, NULL, NULL);
        else if (opts->push)
            push_device(svc, udids[i], &ps, NULL, NULL);
        if (pushes)
            pushes[i] = ps;
    }
}

void esim_service_enqueued(esim_service *svc, const char *const *udids, size_t n)
{
    if (!svc)
        return;
    svc->m.enqueued += n;
    for (size_t i = 0; svc->refill_tab && i < n; i++)
        refill_mark_in(svc->refill_tab, svc->refill_cap, udids[i]);
    for (esim_answer_hold *h = svc->holds; h; h = h->next)
        for (size_t i = 0; h->tab && i < n; i++)
            refill_mark_in(h->tab, h->cap, udids[i]);
}

esim_err esim_service_enqueue_on(const esim_service *svc, store *st, const void *command_plist,
                                 size_t len, const char *const *udids, size_t n,
                                 const esim_enqueue_opts *opts, esim_error *err)
{
    esim_enqueue_opts none = {0};
    if (!svc || !st)
        return esim_fail(err, ESIM_EINVAL, "esim_service_enqueue_on needs a service and a store");
    return svc_enqueue_store(svc, st, command_plist, len, udids, n, opts ? opts : &none, NULL, err);
}

/* ---- a module's store jobs -------------------------------------------------------------- */

typedef struct {
    pool_job job; /* first: the pool's view of it */
    void (*run)(store *st, void *arg);
    void (*done)(esim_service *svc, void *arg, bool ran);
    void *arg;
} module_job;

static void module_job_run(store *st, pool_job *pj)
{
    module_job *j = (module_job *)pj;
    j->run(st, j->arg);
}

static void module_job_done(esim_service *svc, pool_job *pj)
{
    module_job *j = (module_job *)pj;
    bool ran = pj->ran;
    void (*done)(esim_service *, void *, bool) = j->done;
    void *arg = j->arg;
    free(j);
    done(svc, arg, ran);
}

esim_err esim_service_store_job(esim_service *svc, void (*run)(store *st, void *arg),
                                void (*done)(esim_service *svc, void *arg, bool ran), void *arg)
{
    if (!svc || !run || !done)
        return ESIM_EINVAL;
    module_job *j = calloc(1, sizeof *j);
    if (!j)
        return ESIM_ENOMEM;
    j->job.run = module_job_run;
    j->job.done = module_job_done;
    j->job.admin = true;
    j->run = run;
    j->done = done;
    j->arg = arg;
    pool_run(svc, &j->job);
    return ESIM_OK;
}

bool esim_service_store_jobs_async(const esim_service *svc)
{
    return svc && pool_on(svc);
}

esim_err esim_service_push(esim_service *svc, const char *udid, esim_push_state *state,
                           esim_error *err)
{
    return push_device(svc, udid, state, NULL, err);
}

void esim_service_push_to(esim_service *svc, const store_push_target *t, esim_push_state *state,
                          esim_error *err)
{
    push_send(svc, t, state, NULL, err);
}

/* ---- /metrics ---------------------------------------------------------------------------- */

esim_err svc_metrics_text(esim_service *svc, esim_buf *out)
{
    static const char *const routes[] = {"mdm", "api", "other"};
    static const char *const codes[] = {"2xx", "4xx", "5xx"};
    /* By esim_msg_kind - 1 (a result is not a check-in: NULL). */
    static const char *const checkins[] = {
        "Authenticate",     "TokenUpdate",       "CheckOut",          NULL,
        "UserAuthenticate", "SetBootstrapToken", "GetBootstrapToken", "DeclarativeManagement",
        "GetToken"};
    const svc_metrics *m = &svc->m;
    esim_buf_append_str(out, "# HELP esim_mdm_http_requests_total HTTP requests answered.\n"
                             "# TYPE esim_mdm_http_requests_total counter\n");
    for (int r = 0; r < M_ROUTE_COUNT; r++)
        for (int c = 0; c < M_CODE_COUNT; c++)
            esim_buf_printf(out, "esim_mdm_http_requests_total{endpoint=\"%s\",code=\"%s\"} %llu\n",
                            routes[r], codes[c], (unsigned long long)m->requests[r][c]);
    esim_buf_append_str(out, "# HELP esim_mdm_checkins_total Check-in messages recorded.\n"
                             "# TYPE esim_mdm_checkins_total counter\n");
    for (size_t i = 0; i < sizeof checkins / sizeof checkins[0]; i++)
        if (checkins[i])
            esim_buf_printf(out, "esim_mdm_checkins_total{message_type=\"%s\"} %llu\n", checkins[i],
                            (unsigned long long)m->checkins[i]);
    esim_buf_append_str(out, "# HELP esim_mdm_results_total Command results and Idle by status.\n"
                             "# TYPE esim_mdm_results_total counter\n");
    for (int s = ESIM_STATUS_IDLE; s <= ESIM_STATUS_NOT_NOW; s++)
        esim_buf_printf(out, "esim_mdm_results_total{status=\"%s\"} %llu\n",
                        esim_status_name((esim_status)s), (unsigned long long)m->results[s]);
    esim_buf_printf(
        out,
        "# TYPE esim_mdm_result_anomalies_total counter\n"
        "esim_mdm_result_anomalies_total %llu\n"
        "# TYPE esim_mdm_commands_sent_total counter\n"
        "esim_mdm_commands_sent_total %llu\n"
        "# TYPE esim_mdm_commands_enqueued_total counter\n"
        "esim_mdm_commands_enqueued_total %llu\n"
        "# TYPE esim_mdm_device_refused_total counter\n"
        "esim_mdm_device_refused_total{reason=\"auth\"} %llu\n"
        "esim_mdm_device_refused_total{reason=\"rate\"} %llu\n"
        "esim_mdm_device_refused_total{reason=\"malformed\"} %llu\n"
        "esim_mdm_device_refused_total{reason=\"too_big\"} %llu\n"
        "esim_mdm_device_refused_total{reason=\"replay\"} %llu\n"
        "# HELP esim_mdm_replay_duplicates_total Signed messages taken twice: "
        "answered with nothing.\n"
        "# TYPE esim_mdm_replay_duplicates_total counter\n"
        "esim_mdm_replay_duplicates_total %llu\n"
        "# TYPE esim_mdm_signatures_without_time_total counter\n"
        "esim_mdm_signatures_without_time_total %llu\n"
        "# TYPE esim_mdm_store_errors_total counter\n"
        "esim_mdm_store_errors_total %llu\n"
        "# TYPE esim_mdm_identity_cache_total counter\n"
        "esim_mdm_identity_cache_total{result=\"hit\"} %llu\n"
        "esim_mdm_identity_cache_total{result=\"miss\"} %llu\n"
        "esim_mdm_identity_cache_total{result=\"key\"} %llu\n"
        "esim_mdm_identity_cache_total{result=\"read\"} %llu\n"
        "# HELP esim_mdm_identity_chain_checks_total Identity certificate chains "
        "verified up to the device CA (once per certificate every 5 minutes).\n"
        "# TYPE esim_mdm_identity_chain_checks_total counter\n"
        "esim_mdm_identity_chain_checks_total %llu\n"
        "# HELP esim_mdm_identity_key_tables_total P-256 key tables made for the kept-key "
        "signature check (a key's first message, or its slot taken since by another key).\n"
        "# TYPE esim_mdm_identity_key_tables_total counter\n"
        "esim_mdm_identity_key_tables_total %llu\n"
        "# HELP esim_mdm_tls_client_cert_handshakes_total TLS handshakes with a client "
        "certificate: full (its chain checked) or resumed from a session of one that verified.\n"
        "# TYPE esim_mdm_tls_client_cert_handshakes_total counter\n"
        "esim_mdm_tls_client_cert_handshakes_total{kind=\"full\"} %llu\n"
        "esim_mdm_tls_client_cert_handshakes_total{kind=\"resumed\"} %llu\n"
        "# HELP esim_mdm_signature_checks_total Mdm-Signatures of known certificates "
        "checked from their DER bytes (direct) or by OpenSSL's CMS_verify (cms).\n"
        "# TYPE esim_mdm_signature_checks_total counter\n"
        "esim_mdm_signature_checks_total{path=\"direct\"} %llu\n"
        "esim_mdm_signature_checks_total{path=\"cms\"} %llu\n",
        (unsigned long long)m->anomalies, (unsigned long long)m->commands_sent,
        (unsigned long long)m->enqueued, (unsigned long long)m->auth_refused,
        (unsigned long long)m->rate_limited, (unsigned long long)m->malformed,
        (unsigned long long)m->too_big, (unsigned long long)m->replays_stale,
        (unsigned long long)m->replays_duplicate, (unsigned long long)m->signatures_without_time,
        (unsigned long long)m->store_errors, (unsigned long long)m->identity_cache_hits,
        (unsigned long long)m->identity_cache_misses, (unsigned long long)m->identity_cache_keys,
        (unsigned long long)m->identity_cache_reads, (unsigned long long)m->identity_chain_checks,
        (unsigned long long)auth_key_tables(svc), (unsigned long long)m->tls_cert_full,
        (unsigned long long)m->tls_cert_resumed, (unsigned long long)m->signatures_direct,
        (unsigned long long)m->signatures_cms);
    esim_buf_printf(out,
                    "# HELP esim_mdm_tls_sessions Resumable TLS sessions the service keeps "
                    "(bounded; about 300 bytes each).\n"
                    "# TYPE esim_mdm_tls_sessions gauge\n"
                    "esim_mdm_tls_sessions %zu\n",
                    tls_sessions_count(svc->tls_sessions));
    esim_buf_append_str(out, "# HELP esim_mdm_pushes_total Pushes asked for, by what happened.\n"
                             "# TYPE esim_mdm_pushes_total counter\n");
    for (int p = 0; p <= ESIM_PUSH_SKIPPED; p++)
        esim_buf_printf(out, "esim_mdm_pushes_total{outcome=\"%s\"} %llu\n",
                        esim_push_state_name((esim_push_state)p), (unsigned long long)m->pushes[p]);
    esim_buf_printf(out,
                    "# HELP esim_mdm_api_auth_total Admin API requests refused: no or a wrong "
                    "key, a role too low, an address locked out after failures.\n"
                    "# TYPE esim_mdm_api_auth_total counter\n"
                    "esim_mdm_api_auth_total{result=\"refused\"} %llu\n"
                    "esim_mdm_api_auth_total{result=\"forbidden\"} %llu\n"
                    "esim_mdm_api_auth_total{result=\"throttled\"} %llu\n",
                    (unsigned long long)m->api_auth_refused, (unsigned long long)m->api_forbidden,
                    (unsigned long long)m->api_throttled);
    push_metrics(svc, out);
    wns_metrics(svc, out);
    eim_metrics(svc, out);
    conn_metrics(svc, out);
    notify_metrics(svc, out);
    for (size_t i = 0; i < svc->n_metrics; i++)
        svc->metrics[i].fn(svc, out, svc->metrics[i].arg);
    esim_buf_printf(out,
                    "# TYPE esim_mdm_webhooks_total counter\n"
                    "esim_mdm_webhooks_total{outcome=\"delivered\"} %llu\n"
                    "esim_mdm_webhooks_total{outcome=\"retried\"} %llu\n"
                    "esim_mdm_webhooks_total{outcome=\"failed\"} %llu\n"
                    "esim_mdm_webhooks_total{outcome=\"dropped\"} %llu\n"
                    "# TYPE esim_mdm_webhooks_pending gauge\n"
                    "esim_mdm_webhooks_pending %zu\n",
                    (unsigned long long)m->webhooks_delivered,
                    (unsigned long long)m->webhooks_retried, (unsigned long long)m->webhooks_failed,
                    (unsigned long long)m->webhooks_dropped, webhooks_pending(svc));
    store_backend_stats bs;
    esim_store_backend_stats(svc->st, &bs);
    esim_buf_printf(out,
                    "# HELP esim_mdm_store_connections Connections of the store to its database "
                    "(open and usable).\n"
                    "# TYPE esim_mdm_store_connections gauge\n"
                    "esim_mdm_store_connections{backend=\"%s\"} %llu\n"
                    "# TYPE esim_mdm_store_queries_total counter\n"
                    "esim_mdm_store_queries_total{outcome=\"sent\"} %llu\n"
                    "esim_mdm_store_queries_total{outcome=\"failed\"} %llu\n"
                    "# TYPE esim_mdm_store_reconnects_total counter\n"
                    "esim_mdm_store_reconnects_total %llu\n"
                    "# TYPE esim_mdm_store_transactions_total counter\n"
                    "esim_mdm_store_transactions_total{outcome=\"commit\"} %llu\n"
                    "esim_mdm_store_transactions_total{outcome=\"rollback\"} %llu\n",
                    esim_store_backend(svc->st), (unsigned long long)bs.connections,
                    (unsigned long long)bs.queries, (unsigned long long)bs.failures,
                    (unsigned long long)bs.reconnects, (unsigned long long)bs.commits,
                    (unsigned long long)bs.rollbacks);
    esim_buf_printf(out,
                    "# TYPE esim_mdm_store_statement_timeouts_total counter\n"
                    "esim_mdm_store_statement_timeouts_total %llu\n",
                    (unsigned long long)bs.statement_timeouts);
    pool_metrics(svc, out);
    store_stats ss;
    /* The database away (restarting, unreachable): everything else is still
     * worth reading, above all the store's own series; the counts wait. */
    if (esim_store_stats(svc->st, &ss, NULL) != ESIM_OK) {
        svc_store_failed(svc, NULL);
        return esim_buf_printf(out,
                               "# TYPE esim_mdm_uptime_seconds gauge\n"
                               "esim_mdm_uptime_seconds %lld\n",
                               (long long)((esim_now_ms() - svc->started_ms) / 1000));
    }
    esim_buf_printf(
        out,
        "# TYPE esim_mdm_devices gauge\n"
        "esim_mdm_devices{state=\"known\"} %llu\n"
        "esim_mdm_devices{state=\"enrolled\"} %llu\n"
        "esim_mdm_devices{state=\"reachable\"} %llu\n"
        "# HELP esim_mdm_queue_entries Queue entries (one command for one device) by state.\n"
        "# TYPE esim_mdm_queue_entries gauge\n",
        (unsigned long long)ss.devices, (unsigned long long)ss.enrolled,
        (unsigned long long)ss.reachable);
    uint64_t depth = 0;
    for (int q = 0; q <= STORE_Q_CANCELED; q++) {
        esim_buf_printf(out, "esim_mdm_queue_entries{state=\"%s\"} %llu\n",
                        esim_store_qstate_name((store_qstate)q),
                        (unsigned long long)ss.queue_by_state[q]);
        if (esim_store_qstate_active((store_qstate)q))
            depth += ss.queue_by_state[q];
    }
    return esim_buf_printf(out,
                           "# HELP esim_mdm_queue_depth Commands waiting for a final answer.\n"
                           "# TYPE esim_mdm_queue_depth gauge\n"
                           "esim_mdm_queue_depth %llu\n"
                           "# TYPE esim_mdm_ledger_events gauge\n"
                           "esim_mdm_ledger_events %llu\n"
                           "# TYPE esim_mdm_uptime_seconds gauge\n"
                           "esim_mdm_uptime_seconds %lld\n",
                           (unsigned long long)depth, (unsigned long long)ss.events,
                           (long long)((esim_now_ms() - svc->started_ms) / 1000));
}

/* ---- reload (SIGHUP) ------------------------------------------------------------------ */

static bool same_text(const char *a, const char *b)
{
    if (a && !*a)
        a = NULL;
    if (b && !*b)
        b = NULL;
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Replaces *slot by a copy of |v| (NULL or "" -> NULL). */
static bool replace_text(char **slot, const char *v)
{
    char *copy = v && *v ? strdup(v) : NULL;
    if (v && *v && !copy)
        return false;
    free(*slot);
    *slot = copy;
    return true;
}

esim_err esim_service_reload(esim_service *svc, const esim_service_config *cfg, char *restart,
                             size_t restart_len, esim_error *err)
{
    if (restart && restart_len)
        restart[0] = '\0';
    if (!svc || !cfg)
        return esim_fail(err, ESIM_EINVAL, "esim_service_reload needs a service and a config");
    /* What only a restart changes: noted, and the running value kept. */
    esim_buf later = {0};
    static const char *const sep = ", ";
#define RESTART_IF(cond, name)                                                                     \
    do {                                                                                           \
        if (cond)                                                                                  \
            esim_buf_printf(&later, "%s%s", later.len ? sep : "", name);                           \
    } while (0)
    RESTART_IF(!same_text(cfg->listen ? cfg->listen : "127.0.0.1:8080", svc->listen), "listen");
    RESTART_IF(!same_text(cfg->data_dir, svc->data_dir), "data-dir");
    RESTART_IF(!same_text(cfg->store, svc->store_spec), "store");
    RESTART_IF(cfg->store_sync != svc->cfg.store_sync, "store-sync");
    RESTART_IF(cfg->store_pool != svc->cfg.store_pool, "store-pool");
    RESTART_IF(cfg->device_auth != svc->cfg.device_auth, "device-auth");
    RESTART_IF(!cfg->tls_cert_path != !svc->tls_cert_path, "tls (on or off)");
    /* The push certificate's files are read again below; other files, or
     * another APNs, need a restart. Compared with what the service started
     * with, not with what PUT /v1/pushcert stored since. */
    RESTART_IF(!same_text(cfg->apns_url, svc->apns_url) ||
                   !same_text(cfg->apns_cert_path, push_configured_cert(svc)) ||
                   !same_text(cfg->apns_key_path, push_configured_key(svc)) ||
                   !same_text(cfg->apns_ca_path, svc->apns_ca_path) ||
                   !same_text(cfg->apns_topic, push_configured_topic(svc)),
               "apns");
    bool hooks_same = cfg->n_webhook_urls == svc->cfg.n_webhook_urls &&
                      same_text(cfg->webhook_secret, svc->webhook_secret);
    for (size_t i = 0; hooks_same && i < cfg->n_webhook_urls; i++)
        hooks_same = same_text(cfg->webhook_urls[i], svc->webhook_urls[i]);
    RESTART_IF(!hooks_same, "webhooks");
    /* The running limits are settled (defaults filled in): a limit left
     * unset (0) keeps it. */
    RESTART_IF((cfg->max_connections && cfg->max_connections != svc->cfg.max_connections) ||
                   (cfg->max_connections_per_peer &&
                    cfg->max_connections_per_peer != svc->cfg.max_connections_per_peer) ||
                   (cfg->max_pending_bytes_per_peer &&
                    cfg->max_pending_bytes_per_peer != svc->cfg.max_pending_bytes_per_peer) ||
                   (cfg->max_pending_bytes && cfg->max_pending_bytes != svc->cfg.max_pending_bytes),
               "connection limits");
#undef RESTART_IF

    /* Load everything new first; nothing changes unless all of it is good. */
    esim_err rc = ESIM_OK;
    X509_STORE *ca = NULL;
    SSL_CTX *tls = NULL;
    const char *ca_path = cfg->device_ca_path && *cfg->device_ca_path ? cfg->device_ca_path : NULL;
    if (svc->cfg.device_auth != ESIM_DEVICE_AUTH_NONE) {
        if (!ca_path)
            rc = esim_fail(err, ESIM_EINVAL, "the device CA is required: device auth is not none");
        else
            rc = auth_load_ca_file(ca_path, "device CA", &ca, err);
    }
    if (rc == ESIM_OK && svc->tls && cfg->tls_cert_path && cfg->tls_key_path)
        rc = tls_ctx_build(svc, cfg->tls_cert_path, cfg->tls_key_path,
                           ca_path ? ca_path : svc->device_ca_path, &tls, err);
    else if (rc == ESIM_OK && svc->tls && (!cfg->tls_cert_path != !cfg->tls_key_path))
        rc = esim_fail(err, ESIM_EINVAL, "--tls-cert and --tls-key go together");
    struct push_fresh *push = NULL;
    if (rc == ESIM_OK)
        rc = push_reload_prepare(svc, &push, err);
    /* Keys last: esim_service_set_api_keys checks before it replaces. */
    char *paths[4] = {NULL, NULL, NULL, NULL};
    if (rc == ESIM_OK) {
        bool oom = !replace_text(&paths[0], cfg->api_token) ||
                   !replace_text(&paths[1], ca_path ? ca_path : svc->device_ca_path) ||
                   !replace_text(&paths[2], tls ? cfg->tls_cert_path : svc->tls_cert_path) ||
                   !replace_text(&paths[3], tls ? cfg->tls_key_path : svc->tls_key_path);
        if (oom)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    if (rc == ESIM_OK)
        rc = esim_service_set_api_keys(svc, cfg->api_token, cfg->api_keys, cfg->n_api_keys, err);
    if (rc != ESIM_OK) {
        X509_STORE_free(ca);
        SSL_CTX_free(tls);
        push_reload_discard(push);
        for (int i = 0; i < 4; i++)
            free(paths[i]);
        esim_buf_free(&later);
        svc_log(svc, ESIM_LOG_ERROR, "reload_refused", "reason", err ? err->msg : NULL, NULL);
        return rc;
    }
    /* Commit. Connections already open keep the TLS context they started
     * with (OpenSSL counts its users); new ones get the new one. */
    if (ca) {
        X509_STORE_free(svc->device_ca);
        svc->device_ca = ca;
        auth_cache_free(svc);   /* certificates verified against the old CA */
        svc->device_ca_epoch++; /* and the tickets of their sessions */
    }
    if (tls) {
        SSL_CTX_free(svc->tls);
        svc->tls = tls;
        tls_sessions_clear(svc->tls_sessions); /* a new context: every session ends */
    }
    bool push_new = push != NULL;
    push_reload_commit(svc, push);
    if (svc->api_token)
        OPENSSL_cleanse(svc->api_token, strlen(svc->api_token));
    free(svc->api_token);
    svc->api_token = paths[0];
    free(svc->device_ca_path);
    svc->device_ca_path = paths[1];
    free(svc->tls_cert_path);
    svc->tls_cert_path = paths[2];
    free(svc->tls_key_path);
    svc->tls_key_path = paths[3];
    if (cfg->max_body)
        svc->cfg.max_body = cfg->max_body;
    if (cfg->max_depth)
        svc->cfg.max_depth = cfg->max_depth;
    if (cfg->device_rate > 0)
        svc->cfg.device_rate = cfg->device_rate;
    if (cfg->device_burst)
        svc->cfg.device_burst = cfg->device_burst;
    if (cfg->not_now_backoff_ms > 0)
        svc->cfg.not_now_backoff_ms = cfg->not_now_backoff_ms;
    if (cfg->replay_window_ms)
        svc->cfg.replay_window_ms = cfg->replay_window_ms;
    svc->cfg.require_signing_time = cfg->require_signing_time;
    if (cfg->auth_failures_free)
        svc->cfg.auth_failures_free = cfg->auth_failures_free;
    svc->cfg.log_level = cfg->log_level;
    svc->cfg.log_json = cfg->log_json;
    svc->cfg.access_log = cfg->access_log;
    char n_keys[16];
    snprintf(n_keys, sizeof n_keys, "%zu", svc->n_keys);
    svc_log(svc, ESIM_LOG_INFO, "reloaded", "api_keys", n_keys, "tls", tls ? "new" : NULL,
            "device_ca", ca ? "new" : NULL, "push_cert", push_new ? "new" : NULL, NULL);
    if (later.len) {
        svc_log(svc, ESIM_LOG_WARN, "restart_needed", "settings", (const char *)later.data, NULL);
        if (restart && restart_len)
            snprintf(restart, restart_len, "%s", (const char *)later.data);
    }
    esim_buf_free(&later);
    return ESIM_OK;
}
