/*
 * mock.c — the WNS mock: an HTTPS evhttp listener for the token endpoint and
 * the channel URIs, checked in the order WNS checks them, and an HTTP/1.1
 * delivery channel (long-poll, acknowledged by sequence number) through
 * which device simulators collect accepted raw notifications and hear of
 * expired channels. wns_mock.h has the wire protocol.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <openssl/ssl.h>

#include "core/internal.h"
#include "core/tls.h"
#include "wns/wns_mock.h"

#define MAX_BODY (1u << 20)
#define MAX_PAYLOAD 5120
#define MAX_WAIT_MS 60000
#define DEFAULT_LIMIT 1000
#define MAX_LIMIT 10000

/* ---- a string map (open addressing; entries are never removed) ---------------------- */

typedef struct {
    char *key;
    void *val;
} sent;

typedef struct {
    sent *e;
    size_t cap, n;
} smap;

static void *smap_get(const smap *m, const char *key)
{
    if (!m->cap)
        return NULL;
    for (size_t k = esim_hash_str(key) & (m->cap - 1); m->e[k].key; k = (k + 1) & (m->cap - 1))
        if (strcmp(m->e[k].key, key) == 0)
            return m->e[k].val;
    return NULL;
}

static bool smap_put(smap *m, const char *key, void *val)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        sent *e = calloc(cap, sizeof *e);
        if (!e)
            return false;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->e[i].key)
                continue;
            size_t k = esim_hash_str(m->e[i].key) & (cap - 1);
            while (e[k].key)
                k = (k + 1) & (cap - 1);
            e[k] = m->e[i];
        }
        free(m->e);
        m->e = e;
        m->cap = cap;
    }
    size_t k = esim_hash_str(key) & (m->cap - 1);
    for (; m->e[k].key; k = (k + 1) & (m->cap - 1))
        if (strcmp(m->e[k].key, key) == 0) {
            m->e[k].val = val;
            return true;
        }
    if (!(m->e[k].key = strdup(key)))
        return false;
    m->e[k].val = val;
    m->n++;
    return true;
}

static void smap_free(smap *m, void (*free_val)(void *))
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->e[i].key) {
            free(m->e[i].key);
            if (free_val)
                free_val(m->e[i].val);
        }
    free(m->e);
    memset(m, 0, sizeof *m);
}

/* ---- state -------------------------------------------------------------------------------- */

typedef struct waiter waiter;

typedef struct item {
    struct item *next;
    uint64_t seq;
    bool expired; /* kind "expired", else "push" */
    char *tag, *uri, *payload_b64;
} item;

typedef struct {
    char *name;
    item *head, *tail;
    size_t count;
    waiter *waiters;
} dchan;

typedef struct {
    char *tag, *uri;
    dchan *dc;
    int64_t expires_ms;
    bool expired;
} wchan;

struct waiter {
    waiter *next;
    wns_mock *m;
    dchan *ch;
    struct evhttp_request *req;
    struct event *timer;
    uint64_t after;
    size_t limit;
};

/* An accepted notification whose 200 is held (answer_delay_ms). */
typedef struct held {
    struct held *prev, *next;
    struct wns_mock *m;
    struct evhttp_request *req;
    struct event *timer;
} held;

struct wns_mock {
    struct event_base *base;
    held *held; /* answers held back, newest first */
    wns_mock_config cfg;
    char *client_id, *client_secret;
    char host[300];
    SSL_CTX *ssl;
    struct evhttp *https, *delivery;
    int ports[2];
    smap channels; /* channel token -> wchan */
    smap by_tag;   /* tag -> current wchan */
    smap dchans;   /* delivery channel name -> dchan */
    smap tokens;   /* access token -> int64_t* expiry (wall ms) */
    uint64_t seq, rng;
    wns_mock_stats stats;
};

static uint64_t rnd(wns_mock *m)
{
    uint64_t z = (m->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- configuration ------------------------------------------------------------------------- */

void wns_mock_config_init(wns_mock_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->token_ttl_s = 86400;
    cfg->channel_ttl_s = 30u * 86400u;
    cfg->delivery_cap = 100000;
}

esim_err wns_mock_parse_fail_rates(wns_mock_config *cfg, const char *spec, esim_error *err)
{
    wns_mock_config c = *cfg;
    c.fail_rate_count = 0;
    double total = 0;
    const char *p = spec ? spec : "";
    int item_no = 0;
    while (*p) {
        item_no++;
        char *end;
        long st = strtol(p, &end, 10);
        if (end == p || *end != '=' || st < 400 || st > 599)
            return esim_fail(err, ESIM_EINVAL,
                             "fail rate item %d: want STATUS=RATE, STATUS 400..599", item_no);
        p = end + 1;
        double r = strtod(p, &end);
        if (end == p || !(r >= 0 && r <= 1) || (*end && *end != ','))
            return esim_fail(err, ESIM_EINVAL, "fail rate item %d: the rate must be 0..1", item_no);
        if (c.fail_rate_count == 8)
            return esim_fail(err, ESIM_EINVAL, "at most 8 fail rates");
        c.fail_rate[c.fail_rate_count].status = (int)st;
        c.fail_rate[c.fail_rate_count].rate = r;
        c.fail_rate_count++;
        total += r;
        p = *end ? end + 1 : end;
    }
    if (total > 1.0 + 1e-9)
        return esim_fail(err, ESIM_EINVAL, "fail rates add up to more than 1");
    *cfg = c;
    return ESIM_OK;
}

/* ---- delivery channels ------------------------------------------------------------------- */

static dchan *dchan_get(wns_mock *m, const char *name)
{
    dchan *d = smap_get(&m->dchans, name);
    if (d)
        return d;
    d = calloc(1, sizeof *d);
    if (!d || !(d->name = strdup(name)) || !smap_put(&m->dchans, name, d)) {
        if (d)
            free(d->name);
        free(d);
        return NULL;
    }
    return d;
}

static void item_free(item *it)
{
    free(it->tag);
    free(it->uri);
    free(it->payload_b64);
    free(it);
}

static void send_json(struct evhttp_request *req, int code, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    struct evbuffer *out = evbuffer_new();
    if (out && text)
        evbuffer_add(out, text, strlen(text));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, text ? code : 500, code == 200 ? "OK" : "Error", out);
    if (out)
        evbuffer_free(out);
    free(text);
}

static void send_error(struct evhttp_request *req, int code, const char *msg)
{
    send_json(req, code, json_pack("{s:s}", "error", msg));
}

static void answer(wns_mock *m, dchan *d, struct evhttp_request *req, uint64_t after, size_t limit)
{
    json_t *list = json_array();
    uint64_t next = after;
    size_t n = 0;
    for (item *it = d ? d->head : NULL; it && n < limit; it = it->next) {
        if (it->seq <= after)
            continue;
        json_t *o =
            json_pack("{s:I, s:s, s:s, s:s}", "seq", (json_int_t)it->seq, "kind",
                      it->expired ? "expired" : "push", "tag", it->tag, "channel_uri", it->uri);
        if (o && it->payload_b64)
            json_object_set_new(o, "payload", json_string(it->payload_b64));
        json_array_append_new(list, o);
        next = it->seq;
        n++;
    }
    send_json(req, 200,
              json_pack("{s:I, s:o, s:I}", "next", (json_int_t)next, "deliveries", list, "backlog",
                        (json_int_t)(d ? d->count : 0)));
    (void)m;
}

static void waiter_free(waiter *w)
{
    if (w->timer)
        event_free(w->timer);
    free(w);
}

static void waiter_unlink(waiter *w)
{
    for (waiter **pp = &w->ch->waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
}

static void answer_waiters(dchan *d)
{
    waiter *w;
    while ((w = d->waiters) != NULL) {
        d->waiters = w->next;
        evhttp_connection_set_closecb(evhttp_request_get_connection(w->req), NULL, NULL);
        answer(w->m, d, w->req, w->after, w->limit);
        waiter_free(w);
    }
}

static void waiter_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    waiter *w = arg;
    waiter_unlink(w);
    evhttp_connection_set_closecb(evhttp_request_get_connection(w->req), NULL, NULL);
    answer(w->m, w->ch, w->req, w->after, w->limit);
    waiter_free(w);
}

static void waiter_closed(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    waiter *w = arg;
    waiter_unlink(w);
    waiter_free(w);
}

static void dchan_free(void *p)
{
    dchan *d = p;
    while (d->head) {
        item *it = d->head;
        d->head = it->next;
        item_free(it);
    }
    while (d->waiters) {
        waiter *w = d->waiters;
        d->waiters = w->next;
        waiter_free(w);
    }
    free(d->name);
    free(d);
}

/* Queues an event for |c|'s simulator. False when the channel is full. */
static bool enqueue(wns_mock *m, wchan *c, bool expired, const void *payload, size_t len)
{
    dchan *d = c->dc;
    if (!d)
        return true;
    if (!expired && d->count >= m->cfg.delivery_cap)
        return false;
    item *it = calloc(1, sizeof *it);
    esim_buf b64 = {0};
    if (!it || !(it->tag = strdup(c->tag)) || !(it->uri = strdup(c->uri)) ||
        (len && (esim_base64_encode(payload, len, &b64) != ESIM_OK ||
                 !(it->payload_b64 = strdup((const char *)b64.data))))) {
        esim_buf_free(&b64);
        if (it)
            item_free(it);
        return true; /* out of memory: accepted but lost, as a real push may be */
    }
    esim_buf_free(&b64);
    it->seq = ++m->seq;
    it->expired = expired;
    if (d->tail)
        d->tail->next = it;
    else
        d->head = it;
    d->tail = it;
    d->count++;
    if (!expired)
        m->stats.delivered++;
    answer_waiters(d);
    return true;
}

static void expire(wns_mock *m, wchan *c)
{
    if (c->expired)
        return;
    c->expired = true;
    m->stats.expired++;
    enqueue(m, c, true, NULL, 0);
}

/* ---- channels ------------------------------------------------------------------------------ */

static bool tag_ok(const char *t)
{
    size_t n = t ? strlen(t) : 0;
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)t[i]) && !strchr("-_.{}", t[i]))
            return false;
    return true;
}

static bool name_ok(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len == 0 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)n[i]) && !strchr("-_.", n[i]))
            return false;
    return true;
}

static void wchan_free(void *p)
{
    wchan *c = p;
    free(c->tag);
    free(c->uri);
    free(c);
}

static bool live(const wchan *c)
{
    if (c->expired)
        return false;
    return esim_now_ms() < c->expires_ms;
}

esim_err wns_mock_channel(wns_mock *m, const char *tag, const char *delivery, char *uri,
                          size_t uri_len, int64_t *expires_ms, esim_error *err)
{
    if (!tag_ok(tag))
        return esim_fail(err, ESIM_EINVAL, "a tag is 1..128 of [A-Za-z0-9-_.{}]");
    if (!delivery)
        delivery = "default";
    if (!name_ok(delivery))
        return esim_fail(err, ESIM_EINVAL, "channel names are 1..64 of [A-Za-z0-9._-]");
    dchan *d = dchan_get(m, delivery);
    if (!d)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    wchan *c = smap_get(&m->by_tag, tag);
    if (c && !live(c) && !c->expired)
        expire(m, c); /* its time ran out: tell the simulator, as for a forced expiry */
    if (!c || c->expired) {
        unsigned char raw[24];
        esim_buf hex = {0};
        if (esim_random_bytes(raw, sizeof raw) != ESIM_OK ||
            esim_hex_encode(raw, sizeof raw, &hex) != ESIM_OK)
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        c = calloc(1, sizeof *c);
        char u[512];
        snprintf(u, sizeof u, "https://%s/?token=%s", m->host, (const char *)hex.data);
        if (!c || !(c->tag = strdup(tag)) || !(c->uri = strdup(u)) ||
            !smap_put(&m->channels, (const char *)hex.data, c) || !smap_put(&m->by_tag, tag, c)) {
            /* a channel in the token map is freed with it */
            if (c && smap_get(&m->channels, (const char *)hex.data) != c)
                wchan_free(c);
            esim_buf_free(&hex);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        esim_buf_free(&hex);
        c->expires_ms = esim_now_ms() + (int64_t)m->cfg.channel_ttl_s * 1000;
        m->stats.channels++;
    }
    c->dc = d;
    if (strlen(c->uri) >= uri_len)
        return esim_fail(err, ESIM_EINVAL, "the URI buffer is too small");
    snprintf(uri, uri_len, "%s", c->uri);
    *expires_ms = c->expires_ms;
    return ESIM_OK;
}

static wchan *by_uri(wns_mock *m, const char *uri)
{
    const char *t = uri ? strstr(uri, "?token=") : NULL;
    return t ? smap_get(&m->channels, t + 7) : NULL;
}

esim_err wns_mock_expire_channel(wns_mock *m, const char *uri, esim_error *err)
{
    wchan *c = by_uri(m, uri);
    if (!c)
        return esim_fail(err, ESIM_ENOTFOUND, "no such channel URI");
    expire(m, c);
    return ESIM_OK;
}

size_t wns_mock_expire_tokens(wns_mock *m)
{
    size_t n = 0;
    int64_t now = esim_now_ms();
    for (size_t i = 0; i < m->tokens.cap; i++)
        if (m->tokens.e[i].key) {
            int64_t *exp = m->tokens.e[i].val;
            if (*exp > now) {
                *exp = now;
                n++;
            }
        }
    return n;
}

void wns_mock_stats_get(const wns_mock *m, wns_mock_stats *out)
{
    *out = m->stats;
}

int wns_mock_port(const wns_mock *m, wns_mock_port_kind which)
{
    return which <= WNS_MOCK_PORT_DELIVERY ? m->ports[which] : 0;
}

/* ---- HTTPS: token endpoint and notifications ----------------------------------------------- */

static void reply_wns(wns_mock *m, struct evhttp_request *req, int code, const char *desc)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char id[17];
    snprintf(id, sizeof id, "%016llX", (unsigned long long)rnd(m));
    evhttp_add_header(h, "X-WNS-Msg-ID", id);
    evhttp_add_header(h, "X-WNS-Debug-Trace", "esim-mdm-wns-mock");
    if (code == 200) {
        evhttp_add_header(h, "X-WNS-Status", "received");
    } else {
        evhttp_add_header(h, "X-WNS-Error-Description", desc);
        if (code == 401)
            evhttp_add_header(h, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        if (code == 406 || code == 503)
            evhttp_add_header(h, "Retry-After", "1");
    }
    m->stats.status[code / 100 < 6 ? code / 100 : 5]++;
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", NULL);
}

static void held_free(held *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else
        h->m->held = h->next;
    if (h->next)
        h->next->prev = h->prev;
    evhttp_connection_set_closecb(evhttp_request_get_connection(h->req), NULL, NULL);
    event_free(h->timer);
    free(h);
}

static void held_due(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    held *h = arg;
    wns_mock *m = h->m;
    struct evhttp_request *req = h->req;
    held_free(h);
    reply_wns(m, req, 200, NULL);
}

/* The client went away first: nothing to answer. */
static void held_closed(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    held_free(arg);
}

/* An accepted notification's 200, now or after answer_delay_ms. */
static void reply_accepted(wns_mock *m, struct evhttp_request *req)
{
    if (!m->cfg.answer_delay_ms) {
        reply_wns(m, req, 200, NULL);
        return;
    }
    held *h = calloc(1, sizeof *h);
    if (!h || !(h->timer = evtimer_new(m->base, held_due, h))) {
        free(h);
        reply_wns(m, req, 200, NULL);
        return;
    }
    h->m = m;
    h->req = req;
    h->next = m->held;
    if (m->held)
        m->held->prev = h;
    m->held = h;
    unsigned ms = m->cfg.answer_delay_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(h->timer, &tv);
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), held_closed, h);
}

/* Reads the request body into |out| (NUL-terminated). */
static size_t body_of(struct evhttp_request *req, char **out)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    *out = malloc(n + 1);
    if (!*out)
        return 0;
    evbuffer_remove(in, *out, n);
    (*out)[n] = '\0';
    return n;
}

static void token_error(wns_mock *m, struct evhttp_request *req, const char *error,
                        const char *desc)
{
    m->stats.token_refused++;
    m->stats.status[4]++;
    send_json(req, 400, json_pack("{s:s, s:s}", "error", error, "error_description", desc));
}

static void on_token(wns_mock *m, struct evhttp_request *req, const char *body)
{
    m->stats.token_requests++;
    struct evkeyvalq form;
    TAILQ_INIT(&form);
    if (evhttp_parse_query_str(body, &form) != 0) {
        token_error(m, req, "invalid_request", "the body is not a form");
        return;
    }
    const char *gt = evhttp_find_header(&form, "grant_type"),
               *id = evhttp_find_header(&form, "client_id"),
               *secret = evhttp_find_header(&form, "client_secret"),
               *scope = evhttp_find_header(&form, "scope");
    if (!gt || strcmp(gt, "client_credentials") != 0)
        token_error(m, req, "invalid_request", "grant_type must be client_credentials");
    else if (!id || !*id || !secret || !*secret ||
             (m->client_id && strcmp(id, m->client_id) != 0) ||
             (m->client_secret && strcmp(secret, m->client_secret) != 0))
        token_error(m, req, "invalid_client", "unknown client_id or wrong client_secret");
    else if (!scope || strcmp(scope, "notify.windows.com") != 0)
        token_error(m, req, "invalid_scope", "scope must be notify.windows.com");
    else {
        unsigned char raw[32];
        esim_buf tok = {0};
        int64_t *exp = malloc(sizeof *exp);
        if (!exp || esim_random_bytes(raw, sizeof raw) != ESIM_OK ||
            esim_base64_encode(raw, sizeof raw, &tok) != ESIM_OK) {
            free(exp);
            esim_buf_free(&tok);
            send_error(req, 500, "out of memory");
        } else {
            *exp = esim_now_ms() + (int64_t)m->cfg.token_ttl_s * 1000;
            if (!smap_put(&m->tokens, (const char *)tok.data, exp)) {
                free(exp);
                send_error(req, 500, "out of memory");
            } else {
                m->stats.tokens_issued++;
                m->stats.status[2]++;
                send_json(req, 200,
                          json_pack("{s:s, s:s, s:i}", "access_token", (const char *)tok.data,
                                    "token_type", "bearer", "expires_in", (int)m->cfg.token_ttl_s));
            }
            esim_buf_free(&tok);
        }
    }
    evhttp_clear_headers(&form);
}

static void on_notification(wns_mock *m, struct evhttp_request *req, const char *token,
                            const char *body, size_t len)
{
    m->stats.notifications++;
    const struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *auth = evhttp_find_header(h, "Authorization"),
               *type = evhttp_find_header(h, "X-WNS-Type"),
               *ctype = evhttp_find_header(h, "Content-Type");
    if (!auth || strncasecmp(auth, "Bearer ", 7) != 0) {
        m->stats.unauthorized++;
        reply_wns(m, req, 401, "Authorization: Bearer <access token> is missing");
        return;
    }
    int64_t *exp = smap_get(&m->tokens, auth + 7);
    if (!exp || *exp <= esim_now_ms()) {
        m->stats.unauthorized++;
        reply_wns(m, req, 401, exp ? "Token expired" : "Invalid token");
        return;
    }
    if (!type || (strcmp(type, "wns/raw") != 0 && strcmp(type, "wns/toast") != 0 &&
                  strcmp(type, "wns/tile") != 0 && strcmp(type, "wns/badge") != 0)) {
        m->stats.bad_request++;
        reply_wns(m, req, 400, "X-WNS-Type must be wns/raw, wns/toast, wns/tile or wns/badge");
        return;
    }
    if (strcmp(type, "wns/raw") != 0) {
        m->stats.bad_request++;
        reply_wns(m, req, 400, "this mock delivers wns/raw notifications only (MDM wake-ups)");
        return;
    }
    if (!ctype || strcmp(ctype, "application/octet-stream") != 0) {
        m->stats.bad_request++;
        reply_wns(m, req, 400, "a raw notification's Content-Type is application/octet-stream");
        return;
    }
    if (len > MAX_PAYLOAD) {
        reply_wns(m, req, 413, "the payload exceeds 5120 bytes");
        return;
    }
    wchan *c = smap_get(&m->channels, token);
    if (!c) {
        m->stats.not_found++;
        reply_wns(m, req, 404, "the channel URI is not valid or not recognised by WNS");
        return;
    }
    if (!live(c)) {
        expire(m, c);
        m->stats.gone++;
        reply_wns(m, req, 410, "the channel expired");
        return;
    }
    if (m->cfg.fail_rate_count) {
        double draw = (double)(rnd(m) >> 11) / 9007199254740992.0, acc = 0;
        for (int i = 0; i < m->cfg.fail_rate_count; i++) {
            acc += m->cfg.fail_rate[i].rate;
            if (draw < acc) {
                int st = m->cfg.fail_rate[i].status;
                m->stats.injected++;
                if (st == 406)
                    m->stats.throttled++;
                reply_wns(m, req, st,
                          st == 406 ? "throttled: the per-channel rate was exceeded"
                                    : "injected failure");
                return;
            }
        }
    }
    if (!enqueue(m, c, false, body, len)) {
        m->stats.throttled++;
        reply_wns(m, req, 406, "throttled: the device has too many undelivered notifications");
        return;
    }
    m->stats.accepted++;
    reply_accepted(m, req);
}

static void on_https(struct evhttp_request *req, void *arg)
{
    wns_mock *m = arg;
    if (m->cfg.close_connections)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        m->stats.status[4]++;
        evhttp_send_reply(req, 405, "Method Not Allowed", NULL);
        return;
    }
    const char *uri = evhttp_request_get_uri(req);
    char *body = NULL;
    size_t len = body_of(req, &body);
    if (!body) {
        evhttp_send_reply(req, 500, "Error", NULL);
        return;
    }
    const char *t = strstr(uri, "?token=");
    if (!t)
        t = strstr(uri, "&token=");
    if (t)
        on_notification(m, req, t + 7, body, len);
    else
        on_token(m, req, body);
    free(body);
}

/* Counts each completed handshake once (the SSL's app data marks it not
 * yet counted): full, or resumed. */
static void tls_info(const SSL *cssl, int where, int ret)
{
    (void)ret;
    SSL *ssl = (SSL *)cssl;
    if (!(where & SSL_CB_HANDSHAKE_DONE) || !SSL_get_app_data(ssl))
        return;
    SSL_set_app_data(ssl, NULL);
    wns_mock *m = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (m && SSL_session_reused(ssl))
        m->stats.tls_resumed++;
    else if (m)
        m->stats.tls_full++;
}

static struct bufferevent *make_tls_bev(struct event_base *base, void *arg)
{
    wns_mock *m = arg;
    SSL *ssl = SSL_new(m->ssl);
    if (!ssl)
        return NULL;
    SSL_set_app_data(ssl, m);
    return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                          BEV_OPT_CLOSE_ON_FREE);
}

/* ---- the delivery listener ------------------------------------------------------------------ */

static bool q_u64(const struct evkeyvalq *q, const char *name, uint64_t def, uint64_t max,
                  uint64_t *out)
{
    const char *v = evhttp_find_header(q, name);
    if (!v) {
        *out = def;
        return true;
    }
    char *end;
    if (!isdigit((unsigned char)*v))
        return false;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end || x > max)
        return false;
    *out = x;
    return true;
}

static void get_deliveries(wns_mock *m, struct evhttp_request *req, const struct evkeyvalq *q)
{
    const char *name = evhttp_find_header(q, "channel");
    if (!name)
        name = "default";
    uint64_t after, wait_ms, limit;
    if (!name_ok(name)) {
        send_error(req, 400, "channel must be 1 to 64 of [A-Za-z0-9._-]");
        return;
    }
    if (!q_u64(q, "after", 0, UINT64_MAX / 2, &after) ||
        !q_u64(q, "wait_ms", 0, MAX_WAIT_MS, &wait_ms) ||
        !q_u64(q, "limit", DEFAULT_LIMIT, MAX_LIMIT, &limit) || limit == 0) {
        send_error(req, 400, "after, wait_ms (0..60000) and limit (1..10000) must be numbers");
        return;
    }
    dchan *d = dchan_get(m, name);
    if (!d) {
        send_error(req, 500, "out of memory");
        return;
    }
    while (d->head && d->head->seq <= after) { /* acknowledged */
        item *it = d->head;
        d->head = it->next;
        if (!d->head)
            d->tail = NULL;
        d->count--;
        item_free(it);
    }
    if (d->head || wait_ms == 0) {
        answer(m, d, req, after, (size_t)limit);
        return;
    }
    waiter *w = calloc(1, sizeof *w);
    if (!w || !(w->timer = evtimer_new(m->base, waiter_timeout, w))) {
        free(w);
        send_error(req, 500, "out of memory");
        return;
    }
    w->next = d->waiters;
    w->m = m;
    w->ch = d;
    w->req = req;
    w->after = after;
    w->limit = (size_t)limit;
    d->waiters = w;
    struct timeval tv = {(time_t)(wait_ms / 1000), (suseconds_t)(wait_ms % 1000) * 1000};
    evtimer_add(w->timer, &tv);
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), waiter_closed, w);
}

static json_t *body_json(struct evhttp_request *req)
{
    char *body = NULL;
    size_t len = body_of(req, &body);
    json_t *j = body ? json_loadb(body, len, 0, NULL) : NULL;
    free(body);
    return j;
}

static void post_channels(wns_mock *m, struct evhttp_request *req, const struct evkeyvalq *q)
{
    const char *name = evhttp_find_header(q, "channel");
    json_t *j = body_json(req), *tags = json_object_get(j, "tags");
    if (!json_is_array(tags)) {
        json_decref(j);
        send_error(req, 400, "want {\"tags\": [\"<DeviceID>\", ...]}");
        return;
    }
    size_t k;
    json_t *t;
    json_array_foreach(tags, k, t)
    {
        if (!tag_ok(json_string_value(t))) {
            char msg[96];
            snprintf(msg, sizeof msg, "tags[%zu] is not 1..128 of [A-Za-z0-9-_.{}]", k);
            json_decref(j);
            send_error(req, 400, msg);
            return;
        }
    }
    json_t *out = json_array();
    json_array_foreach(tags, k, t)
    {
        char uri[512];
        int64_t exp;
        esim_error err;
        if (wns_mock_channel(m, json_string_value(t), name, uri, sizeof uri, &exp, &err) !=
            ESIM_OK) {
            json_decref(out);
            json_decref(j);
            send_error(req, 400, err.msg);
            return;
        }
        json_array_append_new(out, json_pack("{s:s, s:s, s:I}", "tag", json_string_value(t),
                                             "channel_uri", uri, "expires_ms", (json_int_t)exp));
    }
    json_decref(j);
    send_json(req, 200, json_pack("{s:o}", "channels", out));
}

static void post_expire(wns_mock *m, struct evhttp_request *req)
{
    json_t *j = body_json(req);
    if (!json_is_object(j)) {
        json_decref(j);
        send_error(req, 400, "want {\"channel_uris\":[...]}, {\"tags\":[...]} or {\"all\":true}");
        return;
    }
    size_t n = 0, k;
    json_t *v;
    json_array_foreach(json_object_get(j, "channel_uris"), k, v)
    {
        wchan *c = by_uri(m, json_string_value(v));
        if (c && !c->expired) {
            expire(m, c);
            n++;
        }
    }
    json_array_foreach(json_object_get(j, "tags"), k, v)
    {
        const char *tag = json_string_value(v);
        wchan *c = tag ? smap_get(&m->by_tag, tag) : NULL;
        if (c && !c->expired) {
            expire(m, c);
            n++;
        }
    }
    if (json_is_true(json_object_get(j, "all")))
        for (size_t i = 0; i < m->channels.cap; i++)
            if (m->channels.e[i].key && !((wchan *)m->channels.e[i].val)->expired) {
                expire(m, m->channels.e[i].val);
                n++;
            }
    json_decref(j);
    send_json(req, 200, json_pack("{s:I}", "expired", (json_int_t)n));
}

static json_t *stats_json(const wns_mock *m)
{
    const wns_mock_stats *s = &m->stats;
    size_t live_n = 0;
    for (size_t i = 0; i < m->channels.cap; i++)
        if (m->channels.e[i].key && live(m->channels.e[i].val))
            live_n++;
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, "
                     "s:I, s:I, s:I, s:I, s:I, s:I}",
                     "token_requests", (json_int_t)s->token_requests, "tokens_issued",
                     (json_int_t)s->tokens_issued, "token_refused", (json_int_t)s->token_refused,
                     "notifications", (json_int_t)s->notifications, "accepted",
                     (json_int_t)s->accepted, "status_2xx", (json_int_t)s->status[2], "status_4xx",
                     (json_int_t)s->status[4], "status_5xx", (json_int_t)s->status[5],
                     "unauthorized", (json_int_t)s->unauthorized, "gone", (json_int_t)s->gone,
                     "not_found", (json_int_t)s->not_found, "bad_request",
                     (json_int_t)s->bad_request, "throttled", (json_int_t)s->throttled, "injected",
                     (json_int_t)s->injected, "channels", (json_int_t)s->channels, "expired",
                     (json_int_t)s->expired, "delivered", (json_int_t)s->delivered, "channels_live",
                     (json_int_t)live_n, "seq", (json_int_t)m->seq, "tls_full",
                     (json_int_t)s->tls_full, "tls_resumed", (json_int_t)s->tls_resumed);
}

static void on_delivery(struct evhttp_request *req, void *arg)
{
    wns_mock *m = arg;
    const struct evhttp_uri *u = evhttp_request_get_evhttp_uri(req);
    const char *path = evhttp_uri_get_path(u), *query = evhttp_uri_get_query(u);
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (query)
        evhttp_parse_query_str(query, &q);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (!path)
        path = "/";
    if (cmd == EVHTTP_REQ_GET && strcmp(path, "/deliveries") == 0)
        get_deliveries(m, req, &q);
    else if (cmd == EVHTTP_REQ_POST && strcmp(path, "/channels") == 0)
        post_channels(m, req, &q);
    else if (cmd == EVHTTP_REQ_POST && strcmp(path, "/expire") == 0)
        post_expire(m, req);
    else if (cmd == EVHTTP_REQ_POST && strcmp(path, "/expire-tokens") == 0)
        send_json(req, 200, json_pack("{s:I}", "expired", (json_int_t)wns_mock_expire_tokens(m)));
    else if (cmd == EVHTTP_REQ_GET && strcmp(path, "/stats") == 0)
        send_json(req, 200, stats_json(m));
    else
        send_error(req, 404, "not found");
    evhttp_clear_headers(&q);
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

static uint16_t bound_port(struct evhttp_bound_socket *bs)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

static esim_err bind_to(struct evhttp *h, const char *addr, int *port, esim_error *err)
{
    char host[256];
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof host)
        return esim_fail(err, ESIM_EINVAL, "'%s' is not HOST:PORT", addr ? addr : "");
    size_t hl = (size_t)(colon - addr);
    if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') {
        memcpy(host, addr + 1, hl - 2);
        host[hl - 2] = '\0';
    } else {
        memcpy(host, addr, hl);
        host[hl] = '\0';
    }
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535 || colon[1] == '\0')
        return esim_fail(err, ESIM_EINVAL, "'%s': the port must be 0..65535", addr);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(h, host, (uint16_t)p);
    if (!bs)
        return esim_fail(err, ESIM_EIO, "cannot listen on %s (in use or not a local address)",
                         addr);
    /* Answers without Nagle (the connections accepted take the listener's
     * TCP_NODELAY on Linux): over TLS an answer is several writes, and each
     * after the first waited about 40 ms for the client's delayed ACK. */
    int one = 1;
    (void)setsockopt(evhttp_bound_socket_get_fd(bs), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *port = bound_port(bs);
    return *port ? ESIM_OK : esim_fail(err, ESIM_EIO, "cannot read the port bound on %s", addr);
}

esim_err wns_mock_new(struct event_base *base, const wns_mock_config *cfg, wns_mock **out,
                      esim_error *err)
{
    if (!base || !cfg || !out)
        return esim_fail(err, ESIM_EINVAL, "the WNS mock needs an event base and a config");
    *out = NULL;
    if (!cfg->listen)
        return esim_fail(err, ESIM_EINVAL, "the WNS mock needs a listen address (HOST:PORT)");
    if (!cfg->tls_cert || !cfg->tls_key)
        return esim_fail(err, ESIM_EINVAL, "the WNS mock needs its TLS certificate and key");
    if (cfg->fail_rate_count < 0 || cfg->fail_rate_count > 8)
        return esim_fail(err, ESIM_EINVAL, "at most 8 fail rates");
    if (cfg->public_host && strlen(cfg->public_host) >= 256)
        return esim_fail(err, ESIM_EINVAL, "the public host is too long");
    wns_mock *m = calloc(1, sizeof *m);
    if (!m)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    m->base = base;
    m->cfg = *cfg;
    if (!m->cfg.token_ttl_s)
        m->cfg.token_ttl_s = 86400;
    if (!m->cfg.channel_ttl_s)
        m->cfg.channel_ttl_s = 30u * 86400u;
    if (!m->cfg.delivery_cap)
        m->cfg.delivery_cap = 100000;
    m->rng = cfg->seed ? cfg->seed : (uint64_t)esim_now_ms();
    esim_err rc = ESIM_OK;
    esim_cert cert = {0};
    if ((cfg->client_id && !(m->client_id = strdup(cfg->client_id))) ||
        (cfg->client_secret && !(m->client_secret = strdup(cfg->client_secret)))) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = esim_cert_load(cfg->tls_cert, cfg->tls_key, &cert, err)) != ESIM_OK)
        goto fail;
    m->ssl = SSL_CTX_new(TLS_server_method());
    if (!m->ssl || SSL_CTX_use_certificate(m->ssl, cert.x509) != 1 ||
        SSL_CTX_use_PrivateKey(m->ssl, cert.key) != 1 || !esim_tls_server_chain(m->ssl)) {
        rc = esim_fail(err, ESIM_ECRYPTO, "the TLS certificate or key is unusable");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(m->ssl, TLS1_2_VERSION);
    /* One session ticket per handshake, not OpenSSL's default two: the
     * service's client (curl, sharing sessions across its connections)
     * keeps the newest one per host, so a second was made (≈ 160,000
     * instructions here) and taken (≈ 100,000 there) for nothing. */
    SSL_CTX_set_num_tickets(m->ssl, 1);
    SSL_CTX_set_app_data(m->ssl, m);
    SSL_CTX_set_info_callback(m->ssl, tls_info);
    m->https = evhttp_new(base);
    if (!m->https) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        goto fail;
    }
    evhttp_set_bevcb(m->https, make_tls_bev, m);
    evhttp_set_gencb(m->https, on_https, m);
    evhttp_set_max_body_size(m->https, MAX_BODY);
    evhttp_set_allowed_methods(m->https, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                             EVHTTP_REQ_DELETE);
    if ((rc = bind_to(m->https, cfg->listen, &m->ports[WNS_MOCK_PORT_HTTPS], err)) != ESIM_OK)
        goto fail;
    if (cfg->public_host)
        snprintf(m->host, sizeof m->host, "%s", cfg->public_host);
    else
        snprintf(m->host, sizeof m->host, "127.0.0.1:%d", m->ports[WNS_MOCK_PORT_HTTPS]);
    if (cfg->delivery_listen) {
        m->delivery = evhttp_new(base);
        if (!m->delivery) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            goto fail;
        }
        evhttp_set_gencb(m->delivery, on_delivery, m);
        evhttp_set_max_body_size(m->delivery, 16u << 20);
        evhttp_set_allowed_methods(m->delivery, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
        if ((rc = bind_to(m->delivery, cfg->delivery_listen, &m->ports[WNS_MOCK_PORT_DELIVERY],
                          err)) != ESIM_OK)
            goto fail;
    }
    esim_cert_clear(&cert);
    *out = m;
    return ESIM_OK;
fail:
    esim_cert_clear(&cert);
    wns_mock_free(m);
    return rc;
}

void wns_mock_free(wns_mock *m)
{
    if (!m)
        return;
    /* Held answers and pending long-polls are given before the listener goes. */
    while (m->held) {
        struct evhttp_request *req = m->held->req;
        held_free(m->held);
        reply_wns(m, req, 200, NULL);
    }
    for (size_t i = 0; i < m->dchans.cap; i++)
        if (m->dchans.e[i].key)
            answer_waiters(m->dchans.e[i].val);
    if (m->delivery)
        evhttp_free(m->delivery);
    if (m->https)
        evhttp_free(m->https);
    SSL_CTX_free(m->ssl);
    smap_free(&m->by_tag, NULL);
    smap_free(&m->channels, wchan_free);
    smap_free(&m->dchans, dchan_free);
    smap_free(&m->tokens, free);
    free(m->client_id);
    free(m->client_secret);
    free(m);
}
