/*
 * delivery.c — the mock's delivery channel: an HTTP/1.1 (evhttp) port where
 * device simulators register their tokens and long-poll for the MDM pushes
 * the mock accepted for them, in order, each once. See apns.h for the wire
 * format and the guarantees.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/queue.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "apns/mock_internal.h"

#define MAX_BODY (16u << 20)
#define MAX_WAIT_MS 60000
#define DEFAULT_LIMIT 1000
#define MAX_LIMIT 10000

struct waiter {
    waiter *next;
    apns_mock *m;
    channel *ch;
    struct evhttp_request *req;
    struct event *timer;
    uint64_t after;
    size_t limit;
};

/* ------------------------------------------------------------ tokens */

void mock_token_info_free(void *p)
{
    token_info *ti = p;
    if (ti)
        free(ti->topic);
    free(ti);
}

token_info *mock_token(apns_mock *m, const char *token, bool create)
{
    char key[201];
    size_t n = strlen(token);
    if (n >= sizeof key)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        key[i] = (char)tolower((unsigned char)token[i]);
    token_info *ti = apns_map_get(&m->tokens, key);
    if (ti || !create)
        return ti;
    ti = calloc(1, sizeof *ti);
    if (ti == NULL || apns_map_put(&m->tokens, key, ti, NULL) != ESIM_OK) {
        free(ti);
        return NULL;
    }
    return ti;
}

/* ---------------------------------------------------------- channels */

static void waiter_free(waiter *w)
{
    if (w->timer)
        event_free(w->timer);
    free(w);
}

void mock_channel_free(void *p)
{
    channel *ch = p;
    if (ch == NULL)
        return;
    while (ch->head) {
        delivery *d = ch->head;
        ch->head = d->next;
        free(d);
    }
    while (ch->waiters) {
        waiter *w = ch->waiters;
        ch->waiters = w->next;
        waiter_free(w);
    }
    free(ch->name);
    free(ch);
}

static channel *channel_get(apns_mock *m, const char *name, bool create)
{
    channel *ch = apns_map_get(&m->channels, name);
    if (ch || !create)
        return ch;
    ch = calloc(1, sizeof *ch);
    if (ch == NULL || (ch->name = strdup(name)) == NULL ||
        apns_map_put(&m->channels, name, ch, NULL) != ESIM_OK) {
        if (ch)
            free(ch->name);
        free(ch);
        return NULL;
    }
    return ch;
}

/* Acknowledgement: asking for pushes after SEQ means every push up to SEQ
 * reached the simulator, so the mock forgets them. */
static void channel_ack(channel *ch, uint64_t after)
{
    while (ch->head && ch->head->seq <= after) {
        delivery *d = ch->head;
        ch->head = d->next;
        if (ch->head == NULL)
            ch->tail = NULL;
        ch->count--;
        free(d);
    }
}

static void send_json(struct evhttp_request *req, int code, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
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

static void send_error(struct evhttp_request *req, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void send_error(struct evhttp_request *req, int code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    send_json(req, code, json_pack("{s:s}", "error", msg));
}

static void answer_deliveries(apns_mock *m, channel *ch, struct evhttp_request *req, uint64_t after,
                              size_t limit)
{
    json_t *list = json_array();
    uint64_t next = after;
    size_t n = 0;
    for (delivery *d = ch ? ch->head : NULL; d && n < limit; d = d->next) {
        if (d->seq <= after)
            continue;
        json_array_append_new(list, json_pack("{s:I,s:s,s:s,s:s,s:s}", "seq", (json_int_t)d->seq,
                                              "token", d->token, "push_magic", d->push_magic,
                                              "topic", d->topic, "apns_id", d->apns_id));
        next = d->seq;
        n++;
    }
    json_t *body = json_pack("{s:I,s:o,s:I}", "next", (json_int_t)next, "pushes", list, "backlog",
                             (json_int_t)(ch ? ch->count : 0));
    if (ch && ch->count >= m->cfg.delivery_cap) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "backlog full: %zu pushes unacknowledged; pushes for this channel get 429 "
                 "until you acknowledge with after=SEQ",
                 ch->count);
        json_object_set_new(body, "error", json_string(msg));
    }
    send_json(req, 200, body);
}

static void waiter_unlink(waiter *w)
{
    for (waiter **pp = &w->ch->waiters; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
}

static void waiter_answer(waiter *w)
{
    waiter_unlink(w);
    evhttp_connection_set_closecb(evhttp_request_get_connection(w->req), NULL, NULL);
    answer_deliveries(w->m, w->ch, w->req, w->after, w->limit);
    waiter_free(w);
}

/* Answers every long-poll of |ch| (each is taken off the list first). */
static void answer_waiters(channel *ch)
{
    waiter *w;
    while ((w = ch->waiters) != NULL) {
        ch->waiters = w->next;
        w->next = NULL;
        evhttp_connection_set_closecb(evhttp_request_get_connection(w->req), NULL, NULL);
        answer_deliveries(w->m, w->ch, w->req, w->after, w->limit);
        waiter_free(w);
    }
}

static void waiter_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    waiter_answer(arg);
}

static void waiter_conn_closed(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    waiter *w = arg;
    /* The simulator went away: evhttp frees the request, we only forget it. */
    waiter_unlink(w);
    waiter_free(w);
}

void mock_deliver(apns_mock *m, token_info *ti, const char *token, const char *push_magic,
                  const char *topic, const char *apns_id)
{
    if (ti == NULL || ti->ch == NULL) {
        m->stats.undelivered++;
        return;
    }
    size_t tl = strlen(token), ml = strlen(push_magic), pl = strlen(topic);
    delivery *d = malloc(sizeof *d + tl + ml + pl + 3);
    if (d == NULL) {
        m->stats.undelivered++;
        return;
    }
    d->next = NULL;
    d->seq = ++m->seq;
    d->token = d->text;
    d->push_magic = d->token + tl + 1;
    d->topic = d->push_magic + ml + 1;
    for (size_t i = 0; i <= tl; i++)
        d->token[i] = (char)tolower((unsigned char)token[i]);
    memcpy(d->push_magic, push_magic, ml + 1);
    memcpy(d->topic, topic, pl + 1);
    snprintf(d->apns_id, sizeof d->apns_id, "%s", apns_id);
    channel *ch = ti->ch;
    if (ch->tail)
        ch->tail->next = d;
    else
        ch->head = d;
    ch->tail = d;
    ch->count++;
    m->stats.delivered++;
    answer_waiters(ch);
}

/* ------------------------------------------------------------- HTTP */

static bool query_u64(const struct evkeyvalq *q, const char *name, uint64_t def, uint64_t max,
                      uint64_t *out)
{
    const char *v = evhttp_find_header(q, name);
    if (v == NULL) {
        *out = def;
        return true;
    }
    char *end;
    if (!isdigit((unsigned char)*v))
        return false;
    unsigned long long x = strtoull(v, &end, 10);
    if (*end != '\0' || x > max)
        return false;
    *out = x;
    return true;
}

static const char *channel_name(const struct evkeyvalq *q)
{
    const char *name = evhttp_find_header(q, "channel");
    if (name == NULL)
        return "default";
    size_t n = strlen(name);
    if (n == 0 || n > 64)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("-_.", name[i]))
            return NULL;
    return name;
}

static void get_deliveries(apns_mock *m, struct evhttp_request *req, const struct evkeyvalq *q)
{
    const char *name = channel_name(q);
    uint64_t after, wait_ms, limit;
    if (name == NULL)
        return send_error(req, 400, "%s", "channel must be 1 to 64 of [A-Za-z0-9._-]");
    if (!query_u64(q, "after", 0, UINT64_MAX / 2, &after) ||
        !query_u64(q, "wait_ms", 0, MAX_WAIT_MS, &wait_ms) ||
        !query_u64(q, "limit", DEFAULT_LIMIT, MAX_LIMIT, &limit) || limit == 0)
        return send_error(req, 400, "%s",
                          "after, wait_ms (0..60000) and limit (1..10000) must be numbers");
    channel *ch = channel_get(m, name, true);
    if (ch == NULL)
        return send_error(req, 500, "%s", "out of memory");
    channel_ack(ch, after);
    bool have = ch->head != NULL;
    if (have || wait_ms == 0)
        return answer_deliveries(m, ch, req, after, (size_t)limit);
    waiter *w = calloc(1, sizeof *w);
    if (w == NULL || (w->timer = evtimer_new(m->base, waiter_timeout, w)) == NULL) {
        free(w);
        return send_error(req, 500, "%s", "out of memory");
    }
    w->m = m;
    w->ch = ch;
    w->req = req;
    w->after = after;
    w->limit = (size_t)limit;
    w->next = ch->waiters;
    ch->waiters = w;
    struct timeval tv = {.tv_sec = (time_t)(wait_ms / 1000),
                         .tv_usec = (suseconds_t)(wait_ms % 1000) * 1000};
    evtimer_add(w->timer, &tv);
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), waiter_conn_closed, w);
}

/* Reads a JSON object body with a "tokens" array of valid tokens. */
static json_t *read_tokens_body(struct evhttp_request *req, json_t **tokens, char *why,
                                size_t why_len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len == 0 || len > MAX_BODY) {
        snprintf(why, why_len, "body must be a JSON object of at most 16 MiB");
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loadb((const char *)evbuffer_pullup(in, -1), len, 0, &jerr);
    *tokens = json_object_get(j, "tokens");
    if (j == NULL || !json_is_object(j) || !json_is_array(*tokens)) {
        snprintf(why, why_len, "expected {\"tokens\": [\"<hex>\", ...]}%s%s", j ? "" : ": ",
                 j ? "" : jerr.text);
        json_decref(j);
        return NULL;
    }
    size_t i;
    json_t *t;
    json_array_foreach(*tokens, i, t)
    {
        const char *s = json_string_value(t);
        if (s == NULL || !apns_token_ok(s, strlen(s))) {
            snprintf(why, why_len, "tokens[%zu] is not a device token (64 to 200 hex digits)", i);
            json_decref(j);
            return NULL;
        }
    }
    return j;
}

static void post_tokens(apns_mock *m, struct evhttp_request *req, const struct evkeyvalq *q)
{
    const char *name = channel_name(q);
    if (name == NULL)
        return send_error(req, 400, "%s", "channel must be 1 to 64 of [A-Za-z0-9._-]");
    char why[200];
    json_t *tokens;
    json_t *j = read_tokens_body(req, &tokens, why, sizeof why);
    if (j == NULL)
        return send_error(req, 400, "%s", why);
    json_t *topic_j = json_object_get(j, "topic");
    const char *topic = json_string_value(topic_j);
    if (topic_j && (topic == NULL || *topic == '\0' || strlen(topic) > 255)) {
        json_decref(j);
        return send_error(req, 400, "%s", "topic must be a non-empty string");
    }
    channel *ch = channel_get(m, name, true);
    size_t i, n = 0;
    json_t *t;
    json_array_foreach(tokens, i, t)
    {
        token_info *ti = ch ? mock_token(m, json_string_value(t), true) : NULL;
        if (ti == NULL)
            break;
        ti->ch = ch;
        free(ti->topic);
        ti->topic = topic ? strdup(topic) : NULL;
        n++;
    }
    json_decref(j);
    if (n < json_array_size(tokens))
        return send_error(req, 500, "%s", "out of memory");
    send_json(req, 200, json_pack("{s:I}", "registered", (json_int_t)n));
}

static void post_dead_tokens(apns_mock *m, struct evhttp_request *req)
{
    char why[200];
    json_t *tokens;
    json_t *j = read_tokens_body(req, &tokens, why, sizeof why);
    if (j == NULL)
        return send_error(req, 400, "%s", why);
    size_t i, n = 0;
    json_t *t;
    json_array_foreach(tokens, i, t)
    {
        if (apns_mock_add_dead_token(m, json_string_value(t), NULL) == ESIM_OK)
            n++;
    }
    json_decref(j);
    send_json(req, 200, json_pack("{s:I}", "dead", (json_int_t)n));
}

static void get_stats(apns_mock *m, struct evhttp_request *req)
{
    const apns_mock_stats *s = &m->stats;
    json_t *j = json_pack(
        "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "connections",
        (json_int_t)s->connections, "tls_refused", (json_int_t)s->tls_refused, "requests",
        (json_int_t)s->requests, "accepted", (json_int_t)s->accepted, "status_2xx",
        (json_int_t)s->status[2], "status_4xx", (json_int_t)s->status[4], "status_5xx",
        (json_int_t)s->status[5], "injected", (json_int_t)s->injected, "refused",
        (json_int_t)s->refused, "goaways", (json_int_t)s->goaways, "resets", (json_int_t)s->resets,
        "delivered", (json_int_t)s->delivered, "undelivered", (json_int_t)s->undelivered,
        "backlog_full", (json_int_t)s->backlog_full, "distinct_jwts", (json_int_t)s->distinct_jwts,
        "max_concurrent", (json_int_t)s->max_concurrent, "seq", (json_int_t)m->seq);
    send_json(req, 200, j);
}

static void handle(struct evhttp_request *req, void *arg)
{
    apns_mock *m = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (path == NULL || (query && evhttp_parse_query_str(query, &q) != 0)) {
        evhttp_clear_headers(&q);
        return send_error(req, 400, "bad request URI");
    }
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (strcmp(path, "/deliveries") == 0 && cmd == EVHTTP_REQ_GET)
        get_deliveries(m, req, &q);
    else if (strcmp(path, "/tokens") == 0 && cmd == EVHTTP_REQ_POST)
        post_tokens(m, req, &q);
    else if (strcmp(path, "/dead-tokens") == 0 && cmd == EVHTTP_REQ_POST)
        post_dead_tokens(m, req);
    else if (strcmp(path, "/stats") == 0 && cmd == EVHTTP_REQ_GET)
        get_stats(m, req);
    else
        send_error(req, 404, "no such endpoint %s; see docs/apns-mock.md", path);
    evhttp_clear_headers(&q);
}

esim_err mock_delivery_start(apns_mock *m, const char *listen, esim_error *err)
{
    struct sockaddr_storage ss;
    socklen_t len;
    esim_err e = apns_addr_parse(listen, &ss, &len, err);
    if (e != ESIM_OK)
        return e;
    m->http = evhttp_new(m->base);
    if (m->http == NULL)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    evhttp_set_max_body_size(m->http, MAX_BODY);
    evhttp_set_allowed_methods(m->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_gencb(m->http, handle, m);
    char host[64];
    char portbuf[8];
    const char *colon = strrchr(listen, ':');
    size_t hl = (size_t)(colon - listen);
    const char *h = listen;
    if (*h == '[')
        h++, hl -= 2;
    snprintf(host, sizeof host, "%.*s", (int)hl, h);
    snprintf(portbuf, sizeof portbuf, "%s", colon + 1);
    struct evhttp_bound_socket *bs =
        evhttp_bind_socket_with_handle(m->http, host, (ev_uint16_t)atoi(portbuf));
    if (bs == NULL)
        return esim_fail(err, ESIM_EIO, "cannot listen on %s for deliveries", listen);
    m->ports[APNS_MOCK_PORT_DELIVERY] = apns_bound_port(evhttp_bound_socket_get_fd(bs));
    if (m->ports[APNS_MOCK_PORT_DELIVERY] == 0)
        return esim_fail(err, ESIM_EIO, "cannot read the delivery port back");
    return ESIM_OK;
}

void mock_delivery_stop(apns_mock *m)
{
    if (m->http == NULL)
        return;
    for (size_t i = 0; i < m->channels.nslots; i++)
        for (apns_map_entry *e = m->channels.slots[i]; e; e = e->next)
            answer_waiters(e->value);
    evhttp_free(m->http);
    m->http = NULL;
}
