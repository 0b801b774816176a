/*
 * wns.c — waking Windows devices: a raw WNS notification to the ChannelURI
 * each device reports in DMClient (windows-omadm.md, "Waking the device").
 *
 * The service first gets an OAuth token (POST grant_type=client_credentials,
 * client_id, client_secret, scope=notify.windows.com to the token URL,
 * answered {access_token, token_type, expires_in}), then POSTs to the
 * channel with X-WNS-Type: wns/raw. Outcomes: 200 delivered (the device's
 * queued entries become pushed); 410 (or 404) the channel is gone: marked
 * dead until the device reports a new one in its next session; 401 the
 * token expired: fetched again and the push retried once; 406, 429 and 5xx
 * retried with doubling back-off. All of it runs with libcurl's multi
 * interface on the service's loop: a slow WNS never holds up a device.
 */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "service/curl_loop.h"
#include "service/service_internal.h"

typedef enum {
    WNS_DELIVERED,
    WNS_EXPIRED, /* 410/404: channel gone */
    WNS_RETRIED, /* 406, 429, 5xx, a transport error: tried again later */
    WNS_FAILED,  /* gave up, or refused (400, 403, 413...) */
    WNS_REAUTH,  /* 401: a new token, then once more */
    WNS_DROPPED, /* too many waiting */
    WNS_OUTCOME_COUNT
} wns_outcome;

static const char *const outcome_names[] = {"delivered", "expired", "retried",
                                            "failed",    "reauth",  "dropped"};

#define WNS_MAX_JOBS 10000
/* Pushes in flight at once, and so connections to WNS (wns_init): the
 * rest wait in the job list, in order, and each one's timeout
 * (wns_timeout_ms) starts when it is sent, not while it waits (curl's own per-host limit
 * would count the wait against the timeout, and a burst larger than
 * WNS can answer within it would time out unsent). */
#define WNS_IN_FLIGHT 32

typedef struct wns_job {
    struct wns_job *prev, *next;
    svc_wns *w;
    char udid[65];
    char *uri;
    int attempts;
    bool reauthed;
    bool token_fetch; /* the OAuth request, not a push */
    CURL *easy;
    struct curl_slist *headers;
    struct event *retry_ev;
    esim_buf reply;
    bool waiting_token; /* parked until a token arrives */
    bool waiting_place; /* parked until fewer than WNS_IN_FLIGHT are in flight */
} wns_job;

struct svc_wns {
    esim_service *svc;
    curl_loop loop; /* its requests on the service's loop */
    CURLSH *share;  /* TLS sessions, shared by its requests */
    wns_job *head, *tail;
    size_t n_jobs;
    size_t in_flight, n_waiting; /* pushes sent and not answered; parked for a place */
    char *secret;
    char *token;
    int64_t token_expires_ms;
    wns_job *fetching; /* the token request in flight, or NULL */
};

static void job_start(wns_job *j);
static void check_finished(svc_wns *w);
static void start_waiting(svc_wns *w);

/* Whether |j| is a push in the multi handle (counted in w->in_flight): its
 * handle is there from job_start's add until check_finished or job_free
 * takes it out. */
static bool in_flight(const wns_job *j)
{
    return j->easy && !j->token_fetch;
}

bool wns_configured(const esim_service *svc)
{
    return svc->wns != NULL;
}

static void job_free(wns_job *j)
{
    svc_wns *w = j->w;
    if (j->prev)
        j->prev->next = j->next;
    else
        w->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        w->tail = j->prev;
    w->n_jobs--;
    if (w->fetching == j)
        w->fetching = NULL;
    if (in_flight(j))
        w->in_flight--;
    if (j->waiting_place)
        w->n_waiting--;
    if (j->easy) {
        curl_multi_remove_handle(w->loop.multi, j->easy);
        curl_easy_cleanup(j->easy);
    }
    curl_slist_free_all(j->headers);
    if (j->retry_ev)
        event_free(j->retry_ev);
    esim_buf_free(&j->reply);
    free(j->uri);
    free(j);
}

static wns_job *job_new(svc_wns *w)
{
    wns_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->w = w;
    j->prev = w->tail;
    if (w->tail)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    w->n_jobs++;
    return j;
}

static void count(svc_wns *w, wns_outcome o)
{
    w->svc->m.wns_outcomes[o]++;
}

static void on_finished(void *arg)
{
    check_finished(arg);
}

static size_t keep(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    wns_job *j = userdata;
    if (j->reply.len + size * nmemb > 65536)
        return 0;
    return esim_buf_append(&j->reply, ptr, size * nmemb) == ESIM_OK ? size * nmemb : 0;
}

/* ---- the token ------------------------------------------------------------------------- */

static void token_fetch(svc_wns *w);

static bool token_valid(const svc_wns *w)
{
    return w->token && esim_now_ms() < w->token_expires_ms;
}

/* Sends every push that waited for the token (or fails them: |ok| false). */
static void release_waiting(svc_wns *w, bool ok)
{
    for (wns_job *j = w->head, *next; j; j = next) {
        next = j->next;
        if (!j->waiting_token)
            continue;
        j->waiting_token = false;
        if (ok) {
            job_start(j);
        } else {
            count(w, WNS_FAILED);
            push_note(w->svc, PUSH_NOTE_FAILED, j->udid,
                      "WNS: no access token from the token endpoint", esim_now_ms());
            job_free(j);
        }
    }
}

static void token_done(svc_wns *w, wns_job *j, CURLcode res, long code)
{
    bool ok = false;
    if (res == CURLE_OK && code == 200) {
        json_t *o = json_loadb((const char *)j->reply.data, j->reply.len, 0, NULL);
        const char *tok = json_string_value(json_object_get(o, "access_token"));
        const char *type = json_string_value(json_object_get(o, "token_type"));
        json_int_t exp = json_integer_value(json_object_get(o, "expires_in"));
        if (tok && *tok && strlen(tok) < ESIM_TOKEN_MAX && type &&
            strcasecmp(type, "bearer") == 0 && !strpbrk(tok, "\r\n")) {
            free(w->token);
            w->token = strdup(tok);
            /* A minute early, so a token never expires on its way. */
            int64_t life = exp > 0 ? (int64_t)exp * 1000 : 3600 * 1000;
            w->token_expires_ms = esim_now_ms() + (life > 120000 ? life - 60000 : life / 2);
            ok = w->token != NULL;
            w->svc->m.wns_tokens++;
        }
        json_decref(o);
    }
    if (!ok) {
        char detail[200];
        snprintf(detail, sizeof detail, "WNS token endpoint answered %ld (%s)", code,
                 curl_easy_strerror(res));
        push_note(w->svc, PUSH_NOTE_FAILED, NULL, detail, esim_now_ms());
    }
    job_free(j);
    release_waiting(w, ok);
}

static void token_fetch(svc_wns *w)
{
    if (w->fetching)
        return;
    esim_service *svc = w->svc;
    wns_job *j = job_new(w);
    if (!j) {
        release_waiting(w, false);
        return;
    }
    j->token_fetch = true;
    w->fetching = j;
    CURL *tmp = curl_easy_init();
    char *id = tmp ? curl_easy_escape(tmp, svc->wns_client_id, 0) : NULL;
    char *sec = tmp ? curl_easy_escape(tmp, w->secret, 0) : NULL;
    esim_buf form = {0};
    if (id && sec)
        esim_buf_printf(&form,
                        "grant_type=client_credentials&client_id=%s&client_secret=%s"
                        "&scope=notify.windows.com",
                        id, sec);
    curl_free(id);
    curl_free(sec);
    if (tmp)
        curl_easy_cleanup(tmp);
    j->uri = form.data ? strdup((const char *)form.data) : NULL; /* the form, kept for the call */
    esim_buf_free(&form);
    if (!j->uri) {
        job_free(j);
        release_waiting(w, false);
        return;
    }
    job_start(j);
}

/* ---- attempts ------------------------------------------------------------------------------ */

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wns_job *j = arg;
    event_free(j->retry_ev);
    j->retry_ev = NULL;
    job_start(j);
}

static void retry_later(wns_job *j, const char *why)
{
    svc_wns *w = j->w;
    esim_service *svc = w->svc;
    if (j->attempts >= svc->cfg.wns_max_attempts) {
        count(w, WNS_FAILED);
        char detail[300];
        snprintf(detail, sizeof detail, "WNS: gave up after %d attempts (%s)", j->attempts, why);
        push_note(svc, PUSH_NOTE_FAILED, j->udid, detail, esim_now_ms());
        job_free(j);
        return;
    }
    count(w, WNS_RETRIED);
    int64_t delay = svc->cfg.wns_retry_base_ms;
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

static void push_done(svc_wns *w, wns_job *j, CURLcode res, long code)
{
    esim_service *svc = w->svc;
    int64_t now = esim_now_ms();
    if (res == CURLE_OK && code == 200) {
        count(w, WNS_DELIVERED);
        push_note(svc, PUSH_NOTE_SENT, j->udid, NULL, now);
        job_free(j);
    } else if (res == CURLE_OK && (code == 410 || code == 404)) {
        /* The channel expired: no push reaches the device until it reports
         * a new ChannelURI in its next (scheduled) session. */
        count(w, WNS_EXPIRED);
        push_note(svc, PUSH_NOTE_DEAD, j->udid, NULL, now);
        push_note(svc, PUSH_NOTE_FAILED, j->udid,
                  code == 410 ? "WNS: 410, the channel expired; waiting for the "
                                "device to report a new one"
                              : "WNS: 404, the channel is not known",
                  now);
        job_free(j);
    } else if (res == CURLE_OK && code == 401 && !j->reauthed) {
        count(w, WNS_REAUTH);
        j->reauthed = true;
        j->attempts--; /* the retry after a new token is not an attempt more */
        free(w->token);
        w->token = NULL;
        j->waiting_token = true;
        token_fetch(w);
    } else if (res != CURLE_OK || code == 406 || code == 429 || code >= 500) {
        char why[120];
        if (res != CURLE_OK)
            snprintf(why, sizeof why, "%s", curl_easy_strerror(res));
        else
            snprintf(why, sizeof why, "HTTP %ld", code);
        retry_later(j, why);
    } else {
        count(w, WNS_FAILED);
        char detail[200];
        snprintf(detail, sizeof detail, "WNS refused the notification: HTTP %ld", code);
        push_note(svc, PUSH_NOTE_FAILED, j->udid, detail, now);
        job_free(j);
    }
}

static void check_finished(svc_wns *w)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(w->loop.multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        wns_job *j = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        long code = 0;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
        CURLcode res = msg->data.result;
        if (in_flight(j))
            w->in_flight--;
        curl_multi_remove_handle(w->loop.multi, j->easy);
        curl_easy_cleanup(j->easy);
        j->easy = NULL;
        curl_slist_free_all(j->headers);
        j->headers = NULL;
        if (j->token_fetch)
            token_done(w, j, res, code);
        else
            push_done(w, j, res, code);
    }
    start_waiting(w);
}

/* Sends the pushes parked for a place, oldest first, while there is one
 * (they sit near the list's head: behind the ones in flight). */
static void start_waiting(svc_wns *w)
{
    for (wns_job *j = w->head, *next; j && w->n_waiting && w->in_flight < WNS_IN_FLIGHT; j = next) {
        next = j->next;
        if (!j->waiting_place)
            continue;
        j->waiting_place = false;
        w->n_waiting--;
        job_start(j);
    }
}

static void job_start(wns_job *j)
{
    svc_wns *w = j->w;
    esim_service *svc = w->svc;
    if (!j->token_fetch && !token_valid(w)) {
        j->waiting_token = true;
        token_fetch(w);
        return;
    }
    if (!j->token_fetch && w->in_flight >= WNS_IN_FLIGHT) {
        j->waiting_place = true;
        w->n_waiting++;
        return;
    }
    j->attempts++;
    esim_buf_free(&j->reply);
    j->easy = curl_easy_init();
    if (!j->easy) {
        retry_later(j, "out of memory");
        return;
    }
    CURL *e = j->easy;
    if (j->token_fetch) {
        curl_easy_setopt(e, CURLOPT_URL, svc->wns_token_url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, j->uri);
        j->headers = curl_slist_append(NULL, "Content-Type: application/x-www-form-urlencoded");
    } else {
        char auth[ESIM_TOKEN_MAX + 32];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", w->token);
        curl_easy_setopt(e, CURLOPT_URL, j->uri);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
        struct curl_slist *h = curl_slist_append(NULL, "X-WNS-Type: wns/raw");
        h = h ? curl_slist_append(h, "Content-Type: application/octet-stream") : NULL;
        h = h ? curl_slist_append(h, auth) : NULL;
        j->headers = h;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, j->headers);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)svc->cfg.wns_timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PRIVATE, j);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, j);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    /* A new connection resumes the TLS session of an earlier one (each
     * request is a new handle, whose own session cache starts empty): a
     * burst of pushes opens connections in parallel, and a full handshake,
     * the server's chain verified, costs ≈ 4.6 M instructions, a resumed
     * one about half. */
    if (w->share)
        curl_easy_setopt(e, CURLOPT_SHARE, w->share);
    /* --wns-ca is the one CA WNS is checked against, else the system's
     * store, loaded once at the start (curl_loop_set_ca). */
    curl_loop_set_ca(e, svc->wns_ca_path, svc->system_store);
    if (!j->headers || curl_multi_add_handle(w->loop.multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        j->easy = NULL;
        retry_later(j, "cannot start the request");
        return;
    }
    if (in_flight(j))
        w->in_flight++;
}

/* ---- the service's side ------------------------------------------------------------------ */

esim_push_state wns_push(esim_service *svc, const char *udid, const char *channel_uri)
{
    svc_wns *w = svc->wns;
    if (!w)
        return ESIM_PUSH_PENDING; /* the device gets it at its next scheduled session */
    if (strncmp(channel_uri, "https://", 8) != 0)
        return ESIM_PUSH_DEAD_TOKEN;
    /* One push in flight per device is enough: it only says "start a session". */
    for (wns_job *j = w->head; j; j = j->next)
        if (!j->token_fetch && strcmp(j->udid, udid) == 0)
            return ESIM_PUSH_SENT;
    if (w->n_jobs >= WNS_MAX_JOBS) {
        count(w, WNS_DROPPED);
        return ESIM_PUSH_FAILED;
    }
    wns_job *j = job_new(w);
    if (!j || !(j->uri = strdup(channel_uri))) {
        if (j)
            job_free(j);
        return ESIM_PUSH_FAILED;
    }
    snprintf(j->udid, sizeof j->udid, "%s", udid);
    job_start(j);
    return ESIM_PUSH_SENT;
}

esim_err wns_init(esim_service *svc, esim_error *err)
{
    if (!svc->wns_token_url)
        return ESIM_OK;
    if (strncmp(svc->wns_token_url, "https://", 8) != 0)
        return esim_fail(err, ESIM_EINVAL, "bad WNS token URL: use https://HOST/PATH");
    if (!svc->wns_client_id || !*svc->wns_client_id || !svc->wns_secret_path)
        return esim_fail(err, ESIM_EINVAL,
                         "WNS needs a client id and a client secret file with the token URL");
    svc_wns *w = calloc(1, sizeof *w);
    if (!w)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    svc->wns = w;
    w->svc = svc;
    esim_err rc = esim_read_token_file(svc->wns_secret_path, &w->secret, err);
    if (rc != ESIM_OK)
        return rc;
    if (curl_loop_init(&w->loop, svc->base, on_finished, w) != 0)
        return esim_fail(err, ESIM_ENOMEM, "cannot set up WNS: out of memory");
    /* A burst of pushes opens connections in parallel (HTTP/1.1, one push
     * each); up to 64 stay open for the next burst instead of the multi
     * handle's default of four per transfer in progress, which closed
     * them all once the burst was over. */
    curl_multi_setopt(w->loop.multi, CURLMOPT_MAXCONNECTS, 64L);
    /* With at most WNS_IN_FLIGHT pushes sent at once (job_start), the
     * rest of a burst waits for a connection to come free (a push is one
     * short request) instead of opening one of its own, which costs the
     * service a TLS handshake (≈ 3.9 M instructions, resumed) and curl's
     * SSL_CTX for it (≈ 1.2 M; callgrind, 6 December): a 1,000-device
     * demo's 200 PCs opened 88 connections (47 for 48 pushes at once in
     * test_wns_connections). */
    /* Used on the service's loop only: no lock callbacks. */
    if (!(w->share = curl_share_init()) ||
        curl_share_setopt(w->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK)
        return esim_fail(err, ESIM_ENOMEM, "cannot set up WNS: out of memory");
    if (!svc->wns_ca_path && !curl_loop_system_store(&svc->system_store))
        return esim_fail(err, ESIM_ENOMEM, "cannot set up WNS: out of memory");
    return ESIM_OK;
}

void wns_free(esim_service *svc)
{
    svc_wns *w = svc->wns;
    if (!w)
        return;
    while (w->head)
        job_free(w->head);
    curl_loop_free(&w->loop);
    if (w->share)
        curl_share_cleanup(w->share); /* after every handle that used it */
    if (w->secret) {
        memset(w->secret, 0, strlen(w->secret));
        free(w->secret);
    }
    free(w->token);
    free(w);
    svc->wns = NULL;
}

void wns_metrics(esim_service *svc, esim_buf *out)
{
    const svc_metrics *m = &svc->m;
    esim_buf_printf(
        out,
        "# HELP esim_mdm_windows_sessions_total OMA-DM sessions started and ended.\n"
        "# TYPE esim_mdm_windows_sessions_total counter\n"
        "esim_mdm_windows_sessions_total{event=\"started\"} %llu\n"
        "esim_mdm_windows_sessions_total{event=\"ended\"} %llu\n"
        "# TYPE esim_mdm_windows_sessions gauge\n"
        "esim_mdm_windows_sessions %zu\n"
        "# TYPE esim_mdm_windows_refused_total counter\n"
        "esim_mdm_windows_refused_total %llu\n"
        "# TYPE esim_mdm_windows_results_total counter\n"
        "esim_mdm_windows_results_total{status=\"Acknowledged\"} %llu\n"
        "esim_mdm_windows_results_total{status=\"Error\"} %llu\n"
        "# TYPE esim_mdm_windows_commands_sent_total counter\n"
        "esim_mdm_windows_commands_sent_total %llu\n"
        "# TYPE esim_mdm_windows_channels_total counter\n"
        "esim_mdm_windows_channels_total{result=\"stored\"} %llu\n"
        "esim_mdm_windows_channels_total{result=\"refused\"} %llu\n",
        (unsigned long long)m->windows_sessions, (unsigned long long)m->windows_sessions_ended,
        omadm_sessions(svc), (unsigned long long)m->windows_refused,
        (unsigned long long)m->windows_results[0], (unsigned long long)m->windows_results[1],
        (unsigned long long)m->windows_commands_sent, (unsigned long long)m->windows_channels,
        (unsigned long long)m->windows_bad_channels);
    if (!svc->wns)
        return;
    esim_buf_append_str(out, "# HELP esim_mdm_wns_outcomes_total WNS notifications by outcome.\n"
                             "# TYPE esim_mdm_wns_outcomes_total counter\n");
    for (int o = 0; o < WNS_OUTCOME_COUNT; o++)
        esim_buf_printf(out, "esim_mdm_wns_outcomes_total{outcome=\"%s\"} %llu\n", outcome_names[o],
                        (unsigned long long)m->wns_outcomes[o]);
    esim_buf_printf(out,
                    "# TYPE esim_mdm_wns_tokens_total counter\nesim_mdm_wns_tokens_total %llu\n"
                    "# TYPE esim_mdm_wns_pending gauge\nesim_mdm_wns_pending %zu\n",
                    (unsigned long long)m->wns_tokens, svc->wns->n_jobs);
}
