/*
 * client.c — the APNs provider client: a pool of long-lived HTTP/2
 * connections (nghttp2 over OpenSSL, or h2c) in the caller's libevent loop.
 * Each push becomes one POST /3/device/<token>; its answer is classified
 * into exactly one apns_result, re-sending retryable failures with back-off.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "apns/internal.h"

#define MAX_PUSH_MAGIC 256
#define MAX_RESPONSE_BODY 1024

typedef struct apns_conn apns_conn;
typedef struct push_item push_item;

/* An intrusive FIFO; a push sits in exactly one at a time. */
typedef struct {
    push_item *head, *tail;
    size_t n;
} push_list;

struct push_item {
    push_item *prev, *next;
    push_list *list;
    apns_client *client;
    apns_conn *conn;        /* while in flight */
    struct event *retry_ev; /* while waiting to be re-sent */
    int attempts;
    int status;
    int64_t submitted_ms;
    void *user_data;
    char *resp;
    size_t resp_len;
    size_t body_len, body_off;
    char apns_id[ESIM_UUID_LEN + 1];
    char resp_apns_id[ESIM_UUID_LEN + 1];
    char expiration[24]; /* "" when not sent */
    char path[10 + 200 + 1];
    char body[];
};

typedef enum { CONN_IDLE, CONN_CONNECTING, CONN_READY, CONN_DRAINING } conn_state;

struct apns_conn {
    apns_client *c;
    conn_state state;
    struct bufferevent *bev;
    nghttp2_session *h2;
    push_list inflight;
    struct event *timer;      /* connect timeout, then ping timeout */
    struct event *ping_timer; /* periodic idle check */
    struct event *backoff_ev; /* reconnect delay */
    bool backoff_pending;
    int backoff_ms;
    bool completed_any; /* at least one answer came back on this connection */
    bool ping_outstanding;
    char goaway_reason[96]; /* from the GOAWAY debug data, "" if none */
    int64_t last_recv_ms;
};

struct apns_client {
    struct event_base *base;
    struct evdns_base *dns;
    struct event *kick;
    apns_result_cb cb;
    void *cb_arg;
    apns_config cfg;
    bool tls;
    char host[256];
    int port;
    char authority[300];
    char topic[256];
    SSL_CTX *ssl_ctx;
    EVP_PKEY *jwt_key;
    char key_id[65], team_id[65];
    esim_buf jwt;
    int64_t jwt_issued_ms;
    bool jwt_force_refresh;
    apns_rng rng;
    push_list ready;   /* waiting for a stream */
    push_list waiting; /* waiting for a retry timer */
    size_t pending;
    apns_conn *conns;
    int connect_failures_in_row;
    bool stopped;
    bool freeing;
    esim_error stop_reason;
    char last_conn_error[512];
    apns_stats stats;
};

/* ---------------------------------------------------------------- lists */

static void list_push_back(push_list *l, push_item *p)
{
    p->list = l;
    p->next = NULL;
    p->prev = l->tail;
    if (l->tail)
        l->tail->next = p;
    else
        l->head = p;
    l->tail = p;
    l->n++;
}

static void list_push_front(push_list *l, push_item *p)
{
    p->list = l;
    p->prev = NULL;
    p->next = l->head;
    if (l->head)
        l->head->prev = p;
    else
        l->tail = p;
    l->head = p;
    l->n++;
}

/* Takes the first push off |l|, or NULL when empty. */
static push_item *list_pop_front(push_list *l)
{
    push_item *p = l->head;
    if (p == NULL)
        return NULL;
    l->head = p->next;
    if (l->head)
        l->head->prev = NULL;
    else
        l->tail = NULL;
    l->n--;
    p->prev = p->next = NULL;
    p->list = NULL;
    return p;
}

static void list_remove(push_item *p)
{
    push_list *l = p->list;
    if (l == NULL)
        return;
    if (p->prev)
        p->prev->next = p->next;
    else
        l->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        l->tail = p->prev;
    l->n--;
    p->prev = p->next = NULL;
    p->list = NULL;
}

/* --------------------------------------------------------------- config */

void esim_apns_config_init(apns_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->auth = APNS_AUTH_CERTIFICATE;
    cfg->connections = 2;
    cfg->max_in_flight = 1000;
    cfg->max_attempts = 5;
    cfg->retry_base_ms = 250;
    cfg->retry_max_ms = 30000;
    cfg->reconnect_min_ms = 1000;
    cfg->reconnect_max_ms = 60000;
    cfg->max_connect_failures = 4;
    cfg->connect_timeout_ms = 10000;
    cfg->idle_ping_ms = 60000;
    cfg->ping_timeout_ms = 10000;
    cfg->token_refresh_s = 2400;
    cfg->max_stream_id = 0x7fffffffu - 2000u;
    cfg->max_pending = 1000000;
}

static esim_err check_range(esim_error *err, const char *name, long v, long lo, long hi)
{
    if (v < lo || v > hi)
        return esim_fail(err, ESIM_EINVAL, "apns config: %s is %ld; use %ld to %ld", name, v, lo,
                         hi);
    return ESIM_OK;
}

static esim_err check_config(const apns_config *cfg, esim_error *err)
{
    esim_err e = ESIM_OK;
    if (e == ESIM_OK)
        e = check_range(err, "connections", cfg->connections, 1, 64);
    if (e == ESIM_OK)
        e = check_range(err, "max_in_flight", cfg->max_in_flight, 1, 100000);
    if (e == ESIM_OK)
        e = check_range(err, "max_attempts", cfg->max_attempts, 1, 1000);
    if (e == ESIM_OK)
        e = check_range(err, "retry_base_ms", cfg->retry_base_ms, 1, 3600000);
    if (e == ESIM_OK)
        e = check_range(err, "retry_max_ms", cfg->retry_max_ms, cfg->retry_base_ms, 3600000);
    if (e == ESIM_OK)
        e = check_range(err, "reconnect_min_ms", cfg->reconnect_min_ms, 1, 3600000);
    if (e == ESIM_OK)
        e = check_range(err, "reconnect_max_ms", cfg->reconnect_max_ms, cfg->reconnect_min_ms,
                        3600000);
    if (e == ESIM_OK)
        e = check_range(err, "max_connect_failures", cfg->max_connect_failures, 0, 1000000);
    if (e == ESIM_OK)
        e = check_range(err, "connect_timeout_ms", cfg->connect_timeout_ms, 1, 3600000);
    if (e == ESIM_OK)
        e = check_range(err, "idle_ping_ms", cfg->idle_ping_ms, 1, 86400000);
    if (e == ESIM_OK)
        e = check_range(err, "ping_timeout_ms", cfg->ping_timeout_ms, 1, 3600000);
    if (e == ESIM_OK && (cfg->max_stream_id < 3 || cfg->max_stream_id > 0x7fffffffu))
        e = esim_fail(err, ESIM_EINVAL, "apns config: max_stream_id must be 3 to 2^31-1");
    if (e == ESIM_OK && cfg->max_pending == 0)
        e = esim_fail(err, ESIM_EINVAL, "apns config: max_pending must be at least 1");
    return e;
}

static bool id_text_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_')
            return false;
    return true;
}

static esim_err load_credentials(apns_client *c, const apns_config *cfg, esim_error *err)
{
    const char *cert = NULL, *key = NULL, *p12 = NULL;
    if (cfg->auth == APNS_AUTH_CERTIFICATE) {
        if (cfg->p12_path)
            p12 = cfg->p12_path;
        else if (cfg->cert_path)
            cert = cfg->cert_path, key = cfg->key_path;
        else
            return esim_fail(err, ESIM_EINVAL,
                             "certificate authentication needs a certificate (cert_path or "
                             "p12_path)");
    } else if (cfg->auth == APNS_AUTH_TOKEN) {
        if (!cfg->p8_path || !cfg->key_id || !cfg->team_id)
            return esim_fail(err, ESIM_EINVAL,
                             "token authentication needs p8_path, key_id and team_id");
        if (!id_text_ok(cfg->key_id, 64) || !id_text_ok(cfg->team_id, 64))
            return esim_fail(err, ESIM_EINVAL,
                             "key_id and team_id must be 1 to 64 letters or digits");
        snprintf(c->key_id, sizeof c->key_id, "%s", cfg->key_id);
        snprintf(c->team_id, sizeof c->team_id, "%s", cfg->team_id);
        esim_err e = apns_jwt_load_key(cfg->p8_path, &c->jwt_key, err);
        if (e != ESIM_OK)
            return e;
    } else if (cfg->auth != APNS_AUTH_NONE) {
        return esim_fail(err, ESIM_EINVAL, "unknown authentication kind %d", (int)cfg->auth);
    }
    char cert_topic[256] = "";
    if (c->tls) {
        esim_err e = apns_tls_client_ctx(cfg->ca_path, cert, key, p12, cfg->p12_password,
                                         &c->ssl_ctx, cert_topic, sizeof cert_topic, err);
        if (e != ESIM_OK)
            return e;
    } else if (cfg->auth == APNS_AUTH_CERTIFICATE) {
        return esim_fail(err, ESIM_EINVAL, "certificate authentication needs an https:// APNs URL");
    }
    const char *topic = cfg->topic ? cfg->topic : cert_topic;
    if (*topic == '\0')
        return esim_fail(err, ESIM_EINVAL,
                         cfg->auth == APNS_AUTH_CERTIFICATE
                             ? "the certificate subject has no UID, so there is no default "
                               "topic; give the topic"
                             : "a topic is required with token or no authentication");
    if (strlen(topic) >= sizeof c->topic || strpbrk(topic, " \t\r\n"))
        return esim_fail(err, ESIM_EINVAL, "topic '%s' is too long or has blanks", topic);
    snprintf(c->topic, sizeof c->topic, "%s", topic);
    return ESIM_OK;
}

static void conn_ping_check(evutil_socket_t fd, short what, void *arg);
static void conn_timer_fired(evutil_socket_t fd, short what, void *arg);
static void conn_backoff_done(evutil_socket_t fd, short what, void *arg);
static void kick_fired(evutil_socket_t fd, short what, void *arg);

esim_err esim_apns_client_new(struct event_base *base, const apns_config *cfg, apns_result_cb cb,
                              void *cb_arg, apns_client **out, esim_error *err)
{
    *out = NULL;
    if (base == NULL || cfg == NULL || cb == NULL)
        return esim_fail(err, ESIM_EINVAL,
                         "esim_apns_client_new needs a base, a config and a callback");
    esim_err e = check_config(cfg, err);
    if (e != ESIM_OK)
        return e;
    apns_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    c->base = base;
    c->cb = cb;
    c->cb_arg = cb_arg;
    c->cfg = *cfg;
    /* Keep no pointers into the caller's strings. */
    c->cfg.url = c->cfg.cert_path = c->cfg.key_path = c->cfg.p12_path = NULL;
    c->cfg.p12_password = c->cfg.p8_path = c->cfg.key_id = c->cfg.team_id = NULL;
    c->cfg.topic = c->cfg.ca_path = NULL;
    c->cfg.token_refresh_s = cfg->token_refresh_s < 1200   ? 1200
                             : cfg->token_refresh_s > 3600 ? 3600
                                                           : cfg->token_refresh_s;
    apns_rng_seed(&c->rng, 0);
    e = apns_url_parse(cfg->url, &c->tls, c->host, sizeof c->host, &c->port, err);
    if (e == ESIM_OK)
        e = load_credentials(c, cfg, err);
    if (e == ESIM_OK) {
        bool v6 = strchr(c->host, ':') != NULL;
        snprintf(c->authority, sizeof c->authority, v6 ? "[%s]:%d" : "%s:%d", c->host, c->port);
        c->conns = calloc((size_t)cfg->connections, sizeof *c->conns);
        c->kick = event_new(base, -1, 0, kick_fired, c);
        c->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                          EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (c->dns == NULL) /* no resolv.conf: fall back to the system resolver */
            c->dns = NULL;
        if (c->conns == NULL || c->kick == NULL)
            e = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (int i = 0; e == ESIM_OK && c->conns && i < cfg->connections; i++) {
        apns_conn *k = &c->conns[i];
        k->c = c;
        k->backoff_ms = cfg->reconnect_min_ms;
        k->timer = evtimer_new(base, conn_timer_fired, k);
        k->ping_timer = event_new(base, -1, EV_PERSIST, conn_ping_check, k);
        k->backoff_ev = evtimer_new(base, conn_backoff_done, k);
        if (!k->timer || !k->ping_timer || !k->backoff_ev)
            e = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    if (e != ESIM_OK) {
        esim_apns_client_free(c);
        return e;
    }
    *out = c;
    return ESIM_OK;
}

const char *esim_apns_client_topic(const apns_client *c)
{
    return c->topic;
}

size_t esim_apns_client_pending(const apns_client *c)
{
    return c->pending;
}

bool esim_apns_client_stopped(const apns_client *c, esim_error *why)
{
    if (c->stopped && why)
        *why = c->stop_reason;
    return c->stopped;
}

void esim_apns_client_stats(const apns_client *c, apns_stats *out)
{
    *out = c->stats;
    out->queued = c->ready.n + c->waiting.n;
    out->in_flight = 0;
    out->connections = 0;
    for (int i = 0; i < c->cfg.connections; i++) {
        out->in_flight += c->conns[i].inflight.n;
        if (c->conns[i].state == CONN_READY || c->conns[i].state == CONN_DRAINING)
            out->connections++;
    }
}

/* -------------------------------------------------------------- results */

static void schedule_pump(apns_client *c)
{
    if (!c->freeing && !event_pending(c->kick, EV_TIMEOUT, NULL))
        event_active(c->kick, EV_TIMEOUT, 0);
}

static void item_free(push_item *p)
{
    if (p->retry_ev)
        event_free(p->retry_ev);
    free(p->resp);
    free(p);
}

/* Delivers the one result of |p| and frees it. |p| is in no list. */
static void finish(push_item *p, apns_outcome outcome, int status, const char *reason,
                   int64_t timestamp_ms)
{
    apns_client *c = p->client;
    int64_t latency = esim_mono_ms() - p->submitted_ms;
    int b = 0;
    while (b < APNS_LATENCY_BUCKETS - 1 && latency > esim_apns_latency_bound_ms(b))
        b++;
    c->stats.latency[b]++;
    switch (outcome) {
    case APNS_OUTCOME_ACCEPTED:
        c->stats.accepted++;
        break;
    case APNS_OUTCOME_TOKEN_DEAD:
        c->stats.token_dead++;
        break;
    case APNS_OUTCOME_RETRY_EXHAUSTED:
        c->stats.retry_exhausted++;
        break;
    case APNS_OUTCOME_REJECTED:
        c->stats.rejected++;
        break;
    case APNS_OUTCOME_CREDENTIAL_FAILED:
        c->stats.credential_failed++;
        break;
    case APNS_OUTCOME_UNREACHABLE:
        c->stats.unreachable++;
        break;
    case APNS_OUTCOME_CANCELED:
        c->stats.canceled++;
        break;
    }
    apns_result r = {
        .outcome = outcome,
        .token = p->path + 10,
        .apns_id = p->resp_apns_id[0] ? p->resp_apns_id : p->apns_id,
        .status = status,
        .reason = reason ? reason : "",
        .timestamp_ms = timestamp_ms,
        .attempts = p->attempts,
        .latency_ms = latency,
        .user_data = p->user_data,
    };
    c->pending--;
    c->cb(&r, c->cb_arg);
    item_free(p);
}

static void fail_list(push_list *l, apns_outcome outcome, const char *reason)
{
    push_item *p;
    while ((p = list_pop_front(l)) != NULL) {
        if (p->retry_ev)
            event_del(p->retry_ev);
        finish(p, outcome, p->status, reason, 0);
    }
}

static void retry_fired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    push_item *p = arg;
    list_remove(p);
    list_push_back(&p->client->ready, p);
    schedule_pump(p->client);
}

/* A retryable failure (not processed by APNs, or no answer): send again after
 * back-off, unless the tries are used up or the credential is stopped. */
static void retry_later(push_item *p, int status, const char *reason)
{
    apns_client *c = p->client;
    if (c->stopped) {
        finish(p, APNS_OUTCOME_CREDENTIAL_FAILED, status, c->stop_reason.msg, 0);
        return;
    }
    if (p->attempts >= c->cfg.max_attempts) {
        finish(p, APNS_OUTCOME_RETRY_EXHAUSTED, status, reason, 0);
        return;
    }
    if (p->retry_ev == NULL)
        p->retry_ev = evtimer_new(c->base, retry_fired, p);
    if (p->retry_ev == NULL) {
        finish(p, APNS_OUTCOME_RETRY_EXHAUSTED, status, "out of memory scheduling a retry", 0);
        return;
    }
    /* Exponential back-off with jitter in [d/2, d], so a burst that failed
     * together does not come back together. */
    int64_t d = c->cfg.retry_base_ms;
    for (int i = 1; i < p->attempts && d < c->cfg.retry_max_ms; i++)
        d *= 2;
    if (d > c->cfg.retry_max_ms)
        d = c->cfg.retry_max_ms;
    int64_t wait = d / 2 + (int64_t)(apns_rng_unit(&c->rng) * (double)(d - d / 2));
    struct timeval tv = {.tv_sec = (time_t)(wait / 1000),
                         .tv_usec = (suseconds_t)(wait % 1000) * 1000};
    p->status = status;
    c->stats.retries++;
    list_push_back(&c->waiting, p);
    evtimer_add(p->retry_ev, &tv);
}

/* 403 and topic errors concern every push of this credential: stop it and
 * fail what waits, rather than hammering APNs with a certificate it refuses. */
static void stop_credential(apns_client *c, int status, const char *reason)
{
    if (c->stopped)
        return;
    c->stopped = true;
    esim_fail(&c->stop_reason, ESIM_EAUTH,
              "APNs refused the credential for topic %s: %d %s; fix the certificate or key "
              "and start again",
              c->topic, status, reason && *reason ? reason : "(no reason)");
    fail_list(&c->waiting, APNS_OUTCOME_CREDENTIAL_FAILED, c->stop_reason.msg);
    fail_list(&c->ready, APNS_OUTCOME_CREDENTIAL_FAILED, c->stop_reason.msg);
}

static bool reason_is(const char *reason, const char *name)
{
    return strcmp(reason, name) == 0;
}

/* Turns a complete answer into the push's outcome (PROTOCOLS.md §4). */
static void classify_answer(push_item *p)
{
    apns_client *c = p->client;
    char reason[80] = "";
    int64_t ts = 0;
    if (p->resp_len > 0) {
        json_t *j = json_loadb(p->resp, p->resp_len, 0, NULL);
        const char *r = json_string_value(json_object_get(j, "reason"));
        if (r)
            snprintf(reason, sizeof reason, "%s", r);
        json_t *t = json_object_get(j, "timestamp");
        if (json_is_integer(t))
            ts = (int64_t)json_integer_value(t);
        json_decref(j);
    }
    int s = p->status;
    if (s == 429)
        c->stats.status_429++;
    if (s >= 500)
        c->stats.status_5xx++;
    if (s >= 200 && s < 300) {
        finish(p, APNS_OUTCOME_ACCEPTED, s, "", 0);
    } else if (s == 410 || (s == 400 && (reason_is(reason, "BadDeviceToken") ||
                                         reason_is(reason, "DeviceTokenNotForTopic")))) {
        finish(p, APNS_OUTCOME_TOKEN_DEAD, s, reason, ts);
    } else if (s == 403 && reason_is(reason, "ExpiredProviderToken") && c->jwt_key) {
        /* Our token aged out (clock skew?): sign a fresh one and re-send. */
        c->jwt_force_refresh = true;
        retry_later(p, s, reason);
    } else if (s == 403 ||
               (s == 400 && (reason_is(reason, "TopicDisallowed") ||
                             reason_is(reason, "BadTopic") || reason_is(reason, "MissingTopic")))) {
        stop_credential(c, s, reason);
        finish(p, APNS_OUTCOME_CREDENTIAL_FAILED, s, reason, 0);
    } else if (s == 429 || s >= 500) {
        retry_later(p, s, reason);
    } else {
        finish(p, APNS_OUTCOME_REJECTED, s, reason, 0);
    }
}

/* ---------------------------------------------------------- connections */

static void pump(apns_client *c);

static void conn_close(apns_conn *k)
{
    if (k->h2) {
        nghttp2_session_del(k->h2);
        k->h2 = NULL;
    }
    if (k->bev) {
        bufferevent_free(k->bev);
        k->bev = NULL;
    }
    evtimer_del(k->timer);
    event_del(k->ping_timer);
    k->ping_outstanding = false;
    k->state = CONN_IDLE;
}

static void fail_waiting_unreachable(apns_client *c)
{
    char reason[600];
    snprintf(reason, sizeof reason, "APNs unreachable after %d attempts: %.200s",
             c->connect_failures_in_row, c->last_conn_error);
    c->connect_failures_in_row = 0;
    fail_list(&c->waiting, APNS_OUTCOME_UNREACHABLE, reason);
    fail_list(&c->ready, APNS_OUTCOME_UNREACHABLE, reason);
}

/* Ends connection |k| (any state): its unanswered streams are re-sent later,
 * and it reconnects at once if it was useful, else after back-off. */
static void conn_drop(apns_conn *k, const char *why)
{
    apns_client *c = k->c;
    bool was_connecting = k->state == CONN_CONNECTING;
    bool useful = k->completed_any;
    push_list orphans = k->inflight;
    memset(&k->inflight, 0, sizeof k->inflight);
    conn_close(k);
    k->completed_any = false;
    if (was_connecting) {
        c->stats.connect_failures++;
        c->connect_failures_in_row++;
        snprintf(c->last_conn_error, sizeof c->last_conn_error, "%s", why);
    }
    push_item *p;
    while ((p = orphans.head) != NULL) {
        orphans.head = p->next;
        p->list = NULL;
        p->prev = p->next = NULL;
        p->conn = NULL;
        c->stats.lost_in_flight++;
        retry_later(p, 0, why);
    }
    if (useful) {
        k->backoff_ms = c->cfg.reconnect_min_ms;
    } else {
        /* Back off before trying again: 1 s, 2 s, ... up to the maximum. */
        k->backoff_pending = true;
        struct timeval tv = {.tv_sec = k->backoff_ms / 1000,
                             .tv_usec = (k->backoff_ms % 1000) * 1000};
        evtimer_add(k->backoff_ev, &tv);
        k->backoff_ms = k->backoff_ms * 2 > c->cfg.reconnect_max_ms ? c->cfg.reconnect_max_ms
                                                                    : k->backoff_ms * 2;
    }
    /* Give up on the waiting pushes only when no connection at all works:
     * one pool member failing while another carries traffic is not an
     * outage. */
    bool any_open = false;
    for (int i = 0; i < c->cfg.connections; i++)
        any_open |= c->conns[i].state == CONN_READY || c->conns[i].state == CONN_DRAINING;
    if (!any_open && c->cfg.max_connect_failures > 0 &&
        c->connect_failures_in_row >= c->cfg.max_connect_failures)
        fail_waiting_unreachable(c);
    schedule_pump(c);
}

static void conn_backoff_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    apns_conn *k = arg;
    k->backoff_pending = false;
    schedule_pump(k->c);
}

static void conn_timer_fired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    apns_conn *k = arg;
    if (k->state == CONN_CONNECTING) {
        char why[512];
        snprintf(why, sizeof why, "no HTTP/2 connection to %.200s within %d ms", k->c->authority,
                 k->c->cfg.connect_timeout_ms);
        conn_drop(k, why);
    } else if (k->ping_outstanding) {
        /* The peer did not answer our PING: the connection is dead even if
         * TCP has not noticed; move its pushes elsewhere. */
        k->c->stats.ping_timeouts++;
        conn_drop(k, "PING unanswered; connection dropped");
    }
}

static bool conn_flush(apns_conn *k)
{
    return apns_h2_flush(k->h2, k->bev);
}

static void conn_ping_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    apns_conn *k = arg;
    apns_client *c = k->c;
    if (k->h2 == NULL || k->ping_outstanding)
        return;
    if (esim_mono_ms() - k->last_recv_ms < c->cfg.idle_ping_ms)
        return;
    if (nghttp2_submit_ping(k->h2, NGHTTP2_FLAG_NONE, NULL) != 0 || !conn_flush(k)) {
        conn_drop(k, "cannot send PING");
        return;
    }
    c->stats.pings_sent++;
    k->ping_outstanding = true;
    struct timeval tv = {.tv_sec = c->cfg.ping_timeout_ms / 1000,
                         .tv_usec = (c->cfg.ping_timeout_ms % 1000) * 1000};
    evtimer_add(k->timer, &tv);
}

static void conn_ready(apns_conn *k)
{
    apns_client *c = k->c;
    k->state = CONN_READY;
    evtimer_del(k->timer);
    c->connect_failures_in_row = 0;
    k->backoff_ms = c->cfg.reconnect_min_ms;
    c->stats.connects++;
    int period = c->cfg.idle_ping_ms < 1000 ? c->cfg.idle_ping_ms : 1000;
    struct timeval tv = {.tv_sec = period / 1000, .tv_usec = (period % 1000) * 1000};
    event_add(k->ping_timer, &tv);
}

/* ---- nghttp2 callbacks ---- */

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *arg)
{
    (void)flags;
    (void)arg;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    push_item *p = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (p == NULL)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        int st = 0;
        for (size_t i = 0; i < valuelen && i < 3 && isdigit(value[i]); i++)
            st = st * 10 + (value[i] - '0');
        p->status = valuelen == 3 ? st : 0;
    } else if (namelen == 7 && memcmp(name, "apns-id", 7) == 0 && valuelen == ESIM_UUID_LEN) {
        memcpy(p->resp_apns_id, value, valuelen);
        p->resp_apns_id[valuelen] = '\0';
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                   size_t len, void *arg)
{
    (void)flags;
    (void)arg;
    push_item *p = nghttp2_session_get_stream_user_data(s, stream_id);
    if (p == NULL || p->resp_len + len > MAX_RESPONSE_BODY)
        return 0; /* an APNs error body is tiny; ignore anything larger */
    char *grown = realloc(p->resp, p->resp_len + len);
    if (grown == NULL)
        return 0;
    p->resp = grown;
    memcpy(p->resp + p->resp_len, data, len);
    p->resp_len += len;
    return 0;
}

/* APNs puts the same JSON as an error body ({"reason":"Shutdown"}) in the
 * GOAWAY debug data; keep it so re-sent pushes say why. */
static void note_goaway_reason(apns_conn *k, const nghttp2_goaway *g)
{
    json_t *j = g->opaque_data_len
                    ? json_loadb((const char *)g->opaque_data, g->opaque_data_len, 0, NULL)
                    : NULL;
    const char *r = json_string_value(json_object_get(j, "reason"));
    snprintf(k->goaway_reason, sizeof k->goaway_reason, "GOAWAY %s (%s)",
             nghttp2_http2_strerror(g->error_code), r ? r : "no reason given");
    json_decref(j);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    (void)s;
    apns_conn *k = arg;
    k->last_recv_ms = esim_mono_ms();
    switch (frame->hd.type) {
    case NGHTTP2_SETTINGS:
        /* The first SETTINGS tells us the peer's stream limit; until then
         * nghttp2 would assume 100, so we do not send before it arrives. */
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && k->state == CONN_CONNECTING)
            conn_ready(k);
        break;
    case NGHTTP2_GOAWAY:
        /* No new streams here; streams above last-stream-id are closed by
         * nghttp2 with REFUSED_STREAM and re-sent elsewhere. */
        k->c->stats.goaways++;
        if (k->state != CONN_IDLE)
            k->state = CONN_DRAINING;
        note_goaway_reason(k, &frame->goaway);
        break;
    case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
            k->ping_outstanding = false;
            evtimer_del(k->timer);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *arg)
{
    apns_conn *k = arg;
    push_item *p = nghttp2_session_get_stream_user_data(s, stream_id);
    if (p == NULL || p->conn != k)
        return 0;
    list_remove(p);
    p->conn = NULL;
    k->completed_any = true;
    if (p->status != 0) {
        classify_answer(p);
    } else if (error_code == NGHTTP2_REFUSED_STREAM) {
        /* Not processed (REFUSED_STREAM or above a GOAWAY's last-stream-id):
         * safe to send again. */
        k->c->stats.refused_streams++;
        char why[160];
        snprintf(why, sizeof why, "stream refused by APNs, not processed%s%.100s",
                 k->goaway_reason[0] ? ": " : "", k->goaway_reason);
        retry_later(p, 0, why);
    } else {
        char why[96];
        snprintf(why, sizeof why, "stream reset before an answer (%.40s)",
                 nghttp2_http2_strerror(error_code));
        retry_later(p, 0, why);
    }
    return 0;
}

static ssize_t read_body(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *arg)
{
    (void)s;
    (void)stream_id;
    (void)arg;
    push_item *p = source->ptr;
    size_t n = p->body_len - p->body_off;
    if (n > length)
        n = length;
    memcpy(buf, p->body + p->body_off, n);
    p->body_off += n;
    if (p->body_off == p->body_len)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static esim_err conn_session_new(apns_conn *k)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return ESIM_ENOMEM;
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_option *opt = NULL;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        return ESIM_ENOMEM;
    }
    /* We read only :status, apns-id and a small JSON body, and check them
     * ourselves; nghttp2's general HTTP header validation is skipped. */
    nghttp2_option_set_no_http_messaging(opt, 1);
    int rv = nghttp2_session_client_new2(&k->h2, cbs, k, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        return ESIM_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
    };
    if (nghttp2_submit_settings(k->h2, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
        nghttp2_session_set_local_window_size(k->h2, NGHTTP2_FLAG_NONE, 0, 1 << 24) != 0)
        return ESIM_ENOMEM;
    return conn_flush(k) ? ESIM_OK : ESIM_EIO;
}

static void describe_bev_error(apns_conn *k, char *why, size_t len)
{
    apns_client *c = k->c;
    int dns = bufferevent_socket_get_dns_error(k->bev);
    unsigned long tls = bufferevent_get_openssl_error(k->bev);
    int sock = EVUTIL_SOCKET_ERROR();
    if (dns) {
        snprintf(why, len, "cannot resolve %.200s: %.200s", c->host, evutil_gai_strerror(dns));
    } else if (tls) {
        char t[256];
        ERR_error_string_n(tls, t, sizeof t);
        SSL *ssl = bufferevent_openssl_get_ssl(k->bev);
        long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        if (vr != X509_V_OK)
            snprintf(why, len, "TLS with %.200s failed: server certificate: %.200s", c->authority,
                     X509_verify_cert_error_string(vr));
        else
            snprintf(why, len, "TLS with %.200s failed: %.200s", c->authority, t);
        while (bufferevent_get_openssl_error(k->bev))
            ;
    } else if (sock) {
        snprintf(why, len, "cannot connect to %.200s: %.200s", c->authority,
                 evutil_socket_error_to_string(sock));
    } else {
        snprintf(why, len, "connection to %.200s closed", c->authority);
    }
}

static void conn_read(struct bufferevent *bev, void *arg)
{
    apns_conn *k = arg;
    if (k->h2 == NULL)
        return; /* nothing is read before the connection is up */
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    unsigned char *data = evbuffer_pullup(in, -1);
    ssize_t n = nghttp2_session_mem_recv(k->h2, data, len);
    if (n < 0) {
        char why[512];
        snprintf(why, sizeof why, "HTTP/2 error from %.200s: %.200s", k->c->authority,
                 nghttp2_strerror((int)n));
        conn_drop(k, why);
        return;
    }
    evbuffer_drain(in, (size_t)n);
    if (!conn_flush(k)) {
        conn_drop(k, "cannot write to APNs");
        return;
    }
    pump(k->c);
}

static void conn_event(struct bufferevent *bev, short events, void *arg)
{
    int saved_errno = EVUTIL_SOCKET_ERROR();
    apns_conn *k = arg;
    apns_client *c = k->c;
    if (events & BEV_EVENT_CONNECTED) {
        int one = 1;
        evutil_socket_t fd = bufferevent_getfd(bev);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (c->tls) {
            const unsigned char *alpn = NULL;
            unsigned alpn_len = 0;
            SSL_get0_alpn_selected(bufferevent_openssl_get_ssl(bev), &alpn, &alpn_len);
            if (alpn_len != 2 || memcmp(alpn, "h2", 2) != 0) {
                char why[512];
                snprintf(why, sizeof why, "%.200s did not agree to HTTP/2 (ALPN h2)", c->authority);
                conn_drop(k, why);
                return;
            }
        }
        if (conn_session_new(k) != ESIM_OK) {
            conn_drop(k, "cannot start the HTTP/2 session");
            return;
        }
        return;
    }
    if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        char why[512];
        int so_error = 0;
        socklen_t sl = sizeof so_error;
        evutil_socket_t fd = bufferevent_getfd(bev);
        if (k->h2 == NULL && fd >= 0)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &sl);
        if (so_error == 0 && k->h2 == NULL && saved_errno != 0)
            so_error = saved_errno;
        if (events & BEV_EVENT_ERROR)
            describe_bev_error(k, why, sizeof why);
        else if (k->h2 == NULL && so_error)
            /* TLS sockets report a refused connect as EOF before the handshake. */
            snprintf(why, sizeof why, "cannot connect to %.200s: %.200s", c->authority,
                     evutil_socket_error_to_string(so_error));
        else
            snprintf(why, sizeof why, "%.200s closed the connection", c->authority);
        conn_drop(k, why);
    }
}

static bool host_is_ip(const char *host)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static void conn_connect(apns_conn *k)
{
    apns_client *c = k->c;
    k->state = CONN_CONNECTING;
    k->completed_any = false;
    k->goaway_reason[0] = '\0';
    k->last_recv_ms = esim_mono_ms();
    if (c->tls) {
        SSL *ssl = SSL_new(c->ssl_ctx);
        if (ssl == NULL) {
            conn_drop(k, "cannot make a TLS session");
            return;
        }
        /* Check the server certificate against the host we dialled. */
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        if (host_is_ip(c->host)) {
            X509_VERIFY_PARAM_set1_ip_asc(vp, c->host);
        } else {
            SSL_set_tlsext_host_name(ssl, c->host);
            X509_VERIFY_PARAM_set1_host(vp, c->host, 0);
        }
        k->bev = bufferevent_openssl_socket_new(c->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
        if (k->bev == NULL)
            SSL_free(ssl);
        else
            bufferevent_openssl_set_allow_dirty_shutdown(k->bev, 1);
    } else {
        k->bev =
            bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    }
    if (k->bev == NULL) {
        conn_drop(k, "out of memory opening a connection");
        return;
    }
    bufferevent_setcb(k->bev, conn_read, NULL, conn_event, k);
    bufferevent_enable(k->bev, EV_READ | EV_WRITE);
    struct timeval tv = {.tv_sec = c->cfg.connect_timeout_ms / 1000,
                         .tv_usec = (c->cfg.connect_timeout_ms % 1000) * 1000};
    evtimer_add(k->timer, &tv);
    if (bufferevent_socket_connect_hostname(k->bev, c->dns, AF_UNSPEC, c->host, c->port) != 0) {
        char why[512];
        describe_bev_error(k, why, sizeof why);
        conn_drop(k, why);
    }
}

/* ---------------------------------------------------------------- pump */

static void refresh_jwt(apns_client *c)
{
    int64_t now = esim_mono_ms();
    /* One token for token_refresh_s: APNs rejects a provider that signs new
     * tokens too often (TooManyProviderTokenUpdates). */
    if (c->jwt.len && !c->jwt_force_refresh &&
        now - c->jwt_issued_ms < (int64_t)c->cfg.token_refresh_s * 1000)
        return;
    esim_buf tok = {0};
    if (esim_buf_append_str(&tok, "bearer ") != ESIM_OK)
        return;
    esim_buf jwt = {0};
    if (apns_jwt_sign(c->jwt_key, c->key_id, c->team_id, esim_now_ms() / 1000, &jwt, NULL) ==
            ESIM_OK &&
        esim_buf_append(&tok, jwt.data, jwt.len) == ESIM_OK) {
        esim_buf_free(&c->jwt);
        c->jwt = tok;
        tok.data = NULL;
        c->jwt_issued_ms = now;
        c->jwt_force_refresh = false;
        c->stats.jwt_issued++;
    }
    esim_buf_free(&jwt);
    esim_buf_free(&tok);
}

#define NV(n, v, vl, fl)                                                                           \
    (nghttp2_nv)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl),                                       \
            (uint8_t)(NGHTTP2_NV_FLAG_NO_COPY_NAME | (fl))                                         \
    }

static bool conn_submit(apns_conn *k, push_item *p)
{
    apns_client *c = k->c;
    const uint8_t keep = NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    /* :path and authorization are sent never-indexed: a token or a JWT in
     * the HPACK table would be a target for compression attacks. */
    nghttp2_nv nva[10] = {
        NV(":method", "POST", 4, keep),
        NV(":scheme", c->tls ? "https" : "http", c->tls ? 5 : 4, keep),
        NV(":authority", c->authority, strlen(c->authority), keep),
        NV(":path", p->path, strlen(p->path), keep | NGHTTP2_NV_FLAG_NO_INDEX),
        NV("apns-push-type", "mdm", 3, keep),
        NV("apns-topic", c->topic, strlen(c->topic), keep),
        NV("apns-priority", "10", 2, keep),
    };
    size_t n = 7;
    /* Unique per request: indexing it would only churn the HPACK table. */
    if (p->apns_id[0])
        nva[n++] = NV("apns-id", p->apns_id, ESIM_UUID_LEN, keep | NGHTTP2_NV_FLAG_NO_INDEX);
    if (p->expiration[0])
        nva[n++] = NV("apns-expiration", p->expiration, strlen(p->expiration),
                      keep | NGHTTP2_NV_FLAG_NO_INDEX);
    if (c->jwt_key && c->jwt.len)
        nva[n++] = NV("authorization", c->jwt.data, c->jwt.len, NGHTTP2_NV_FLAG_NO_INDEX);
    nghttp2_data_provider dp = {.source.ptr = p, .read_callback = read_body};
    p->body_off = 0;
    p->status = 0;
    p->resp_len = 0;
    p->resp_apns_id[0] = '\0';
    int32_t id = nghttp2_submit_request(k->h2, NULL, nva, n, &dp, p);
    if (id < 0)
        return false;
    p->attempts++;
    p->conn = k;
    list_push_back(&k->inflight, p);
    c->stats.sent++;
    return true;
}

static size_t conn_cap(apns_conn *k)
{
    uint32_t peer =
        nghttp2_session_get_remote_settings(k->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    uint32_t local = (uint32_t)k->c->cfg.max_in_flight;
    return peer < local ? peer : local;
}

static void start_connections(apns_client *c)
{
    if (c->stopped || c->pending == 0)
        return;
    /* One at a time: the next connection opens once the previous one is up,
     * so a reconnect storm never hits APNs with the whole pool at once. */
    for (int i = 0; i < c->cfg.connections; i++)
        if (c->conns[i].state == CONN_CONNECTING)
            return;
    for (int i = 0; i < c->cfg.connections; i++) {
        apns_conn *k = &c->conns[i];
        if (k->state == CONN_IDLE && !k->backoff_pending) {
            conn_connect(k);
            return;
        }
    }
}

/* The ready connection with the fewest streams that has room for one more,
 * or NULL. Connections whose stream ids run out are retired here. */
static apns_conn *least_loaded_conn(apns_client *c)
{
    apns_conn *best = NULL;
    for (int i = 0; i < c->cfg.connections; i++) {
        apns_conn *k = &c->conns[i];
        if (k->state != CONN_READY)
            continue;
        if (nghttp2_session_get_next_stream_id(k->h2) > c->cfg.max_stream_id) {
            /* Stream ids are running out: retire this connection once its
             * streams finish; a fresh one takes over. */
            k->state = CONN_DRAINING;
            c->stats.rollovers++;
            continue;
        }
        if (k->inflight.n < conn_cap(k) && (best == NULL || k->inflight.n < best->inflight.n))
            best = k;
    }
    return best;
}

/* Sends what waits, flushes every connection, retires finished ones and
 * opens what the pool lacks. Runs from the loop, never from the caller's
 * esim_apns_client_push(). */
static void pump(apns_client *c)
{
    if (c->freeing)
        return;
    if (c->jwt_key && c->ready.n)
        refresh_jwt(c);
    apns_conn *k;
    while (!c->stopped && c->ready.head && (k = least_loaded_conn(c)) != NULL) {
        push_item *p = c->ready.head;
        list_remove(p);
        if (!conn_submit(k, p)) {
            list_push_front(&c->ready, p);
            k->state = CONN_DRAINING; /* nghttp2 refuses new streams here */
        }
    }
    for (int i = 0; i < c->cfg.connections; i++) {
        k = &c->conns[i];
        if (k->h2 && !conn_flush(k)) {
            conn_drop(k, "cannot write to APNs");
            continue;
        }
        bool finished = k->state == CONN_DRAINING || (c->stopped && k->state == CONN_READY);
        if (finished && k->inflight.n == 0) {
            bool useful = k->completed_any;
            conn_close(k);
            if (!useful)
                conn_drop(k, "connection closed before any answer");
        }
    }
    start_connections(c);
}

static void kick_fired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

/* ---------------------------------------------------------------- push */

esim_err esim_apns_client_push(apns_client *c, const apns_push *push, esim_error *err)
{
    if (c == NULL || push == NULL)
        return esim_fail(err, ESIM_EINVAL, "esim_apns_client_push needs a client and a push");
    if (c->freeing)
        return esim_fail(err, ESIM_ESTATE, "the APNs client is being freed");
    if (c->stopped) {
        if (err)
            *err = c->stop_reason;
        return ESIM_EAUTH;
    }
    const char *tok = push->token ? push->token : "";
    size_t tl = strlen(tok);
    /* Real tokens are 32 bytes, but test clients and some tools enrol with
     * shorter placeholders: any whole number of bytes goes out, and APNs
     * judges it (BadDeviceToken). */
    bool hex = tl > 0 && tl <= 200 && tl % 2 == 0;
    for (size_t i = 0; hex && i < tl; i++)
        hex = isxdigit((unsigned char)tok[i]) != 0;
    if (!hex)
        return esim_fail(err, ESIM_EINVAL,
                         "device token '%.80s' is not 2 to 200 hex digits (even count)", tok);
    const char *magic = push->push_magic ? push->push_magic : "";
    size_t ml = strlen(magic);
    if (ml == 0 || ml > MAX_PUSH_MAGIC)
        return esim_fail(err, ESIM_EINVAL, "push magic must be 1 to %d characters", MAX_PUSH_MAGIC);
    for (size_t i = 0; i < ml; i++)
        if (magic[i] < 0x20 || magic[i] > 0x7e || magic[i] == '"' || magic[i] == '\\')
            return esim_fail(err, ESIM_EINVAL,
                             "push magic has a character that is not printable ASCII (or is a "
                             "quote or backslash) at offset %zu",
                             i);
    if (push->apns_id && (!esim_uuid_valid(push->apns_id)))
        return esim_fail(err, ESIM_EINVAL, "apns-id '%.60s' is not a UUID", push->apns_id);
    if (push->has_expiration && push->expiration < 0)
        return esim_fail(err, ESIM_EINVAL, "apns-expiration must be 0 or a time in seconds");
    if (c->pending >= c->cfg.max_pending)
        return esim_fail(err, ESIM_ETOOBIG, "%zu pushes are already waiting (max_pending)",
                         c->pending);
    /* The body is exactly {"mdm":"<PushMagic>"}: what an MDM device expects. */
    size_t body_len = 10 + ml;
    push_item *p = calloc(1, sizeof *p + body_len + 1);
    if (p == NULL)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    p->client = c;
    p->user_data = push->user_data;
    p->submitted_ms = esim_mono_ms();
    p->body_len = body_len;
    snprintf(p->body, body_len + 1, "{\"mdm\":\"%s\"}", magic);
    memcpy(p->path, "/3/device/", 10);
    for (size_t i = 0; i <= tl; i++)
        p->path[10 + i] = (char)tolower((unsigned char)tok[i]);
    if (push->apns_id)
        for (size_t i = 0; i <= ESIM_UUID_LEN; i++)
            p->apns_id[i] = (char)tolower((unsigned char)push->apns_id[i]);
    if (push->has_expiration)
        snprintf(p->expiration, sizeof p->expiration, "%lld", (long long)push->expiration);
    list_push_back(&c->ready, p);
    c->pending++;
    c->stats.pushed++;
    schedule_pump(c);
    return ESIM_OK;
}

/* ---------------------------------------------------------------- free */

void esim_apns_client_free(apns_client *c)
{
    if (c == NULL)
        return;
    c->freeing = true;
    for (int i = 0; c->conns && i < c->cfg.connections; i++) {
        apns_conn *k = &c->conns[i];
        push_list orphans = k->inflight;
        memset(&k->inflight, 0, sizeof k->inflight);
        if (k->timer)
            conn_close(k);
        push_item *p;
        while ((p = orphans.head) != NULL) {
            orphans.head = p->next;
            p->list = NULL;
            finish(p, APNS_OUTCOME_CANCELED, p->status, "client freed before an answer", 0);
        }
        if (k->timer)
            event_free(k->timer);
        if (k->ping_timer)
            event_free(k->ping_timer);
        if (k->backoff_ev)
            event_free(k->backoff_ev);
    }
    fail_list(&c->waiting, APNS_OUTCOME_CANCELED, "client freed before the push was sent");
    fail_list(&c->ready, APNS_OUTCOME_CANCELED, "client freed before the push was sent");
    free(c->conns);
    if (c->kick)
        event_free(c->kick);
    if (c->dns)
        evdns_base_free(c->dns, 0);
    SSL_CTX_free(c->ssl_ctx);
    EVP_PKEY_free(c->jwt_key);
    esim_buf_free(&c->jwt);
    free(c);
}
