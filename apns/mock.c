/*
 * mock.c — an APNs stand-in: HTTP/2 (nghttp2) over TLS with client
 * certificates, TLS without them, or h2c. It checks every request as APNs
 * does, answers with the same statuses and reasons, injects faults on
 * request, and hands accepted MDM pushes to the delivery channel.
 */
#include <ctype.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>

#include "apns/mock_internal.h"

#define MAX_PAYLOAD 4096
/* Longest a connection that has said everything waits, its write side shut,
 * for the client to close its end (see conn_linger()). */
#define LINGER_MS 30000

typedef enum { PORT_MTLS = 0, PORT_OPEN = 1, PORT_H2C = 2 } port_kind;

typedef struct mock_stream mock_stream;

/* Header fields APNs cares about; each may appear once (DuplicateHeaders). */
enum {
    H_METHOD,
    H_PATH,
    H_TOPIC,
    H_PUSH_TYPE,
    H_PRIORITY,
    H_EXPIRATION,
    H_ID,
    H_COLLAPSE,
    H_AUTH,
    H_COUNT
};

struct mock_stream {
    mock_stream *prev_all, *next_all; /* every stream of the connection */
    mock_conn *mc;
    int32_t id;
    unsigned seen;
    bool duplicate;
    bool complete;
    char *hdr[H_COUNT];
    size_t body_len;
    bool body_too_big;
    unsigned char *body;
    /* the answer */
    int status;
    char resp_id[ESIM_UUID_LEN + 1];
    char resp_body[160];
    size_t resp_len, resp_off;
    mock_stream *next_delayed;
    int64_t due_ms;
    /* delivered when the 200 is actually given */
    token_info *deliver_to;
    char *push_magic;
};

struct mock_conn {
    mock_conn *prev, *next;
    apns_mock *m;
    port_kind kind;
    struct bufferevent *bev;
    nghttp2_session *h2;
    char cert_topic[256];
    bool handshake_done;
    bool has_cert_uid;
    unsigned requests;
    unsigned open_streams;
    bool goaway_sent;
    int32_t goaway_last;
    int32_t highest_processed; /* highest stream id processed so far */
    bool streams_dropped;
    bool resetting;
    bool half_closed;     /* write side shut: lingering until the client closes */
    mock_stream *streams; /* nghttp2_session_del() does not report them */
    mock_stream *delayed_head, *delayed_tail;
    struct event *delay_timer;
    struct event *linger_timer;
};

/* ---------------------------------------------------------- config */

void apns_mock_config_init(apns_mock_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->max_streams = 1000;
    cfg->delivery_cap = 100000;
}

esim_err apns_mock_parse_fail_rates(apns_mock_config *cfg, const char *spec, esim_error *err)
{
    if (spec == NULL || *spec == '\0')
        return esim_fail(err, ESIM_EINVAL, "fail rates are empty; use e.g. 503=0.1,429=0.05");
    cfg->fail_rate_count = 0;
    double total = 0;
    const char *p = spec;
    while (*p) {
        char *end;
        long status = strtol(p, &end, 10);
        if (end == p || *end != '=')
            return esim_fail(err, ESIM_EINVAL, "fail rate '%s': expected STATUS=RATE", p);
        if (status < 400 || status > 599)
            return esim_fail(err, ESIM_EINVAL, "fail rate '%s': status must be 400 to 599", p);
        const char *r = end + 1;
        double rate = strtod(r, &end);
        if (end == r || (*end != ',' && *end != '\0') || !(rate >= 0.0 && rate <= 1.0))
            return esim_fail(err, ESIM_EINVAL, "fail rate '%s': rate must be 0 to 1", p);
        if (cfg->fail_rate_count == 8)
            return esim_fail(err, ESIM_EINVAL, "at most 8 fail rates");
        cfg->fail_rate[cfg->fail_rate_count].status = (int)status;
        cfg->fail_rate[cfg->fail_rate_count].rate = rate;
        cfg->fail_rate_count++;
        total += rate;
        p = *end == ',' ? end + 1 : end;
    }
    if (total > 1.0 + 1e-9)
        return esim_fail(err, ESIM_EINVAL, "fail rates add up to %.3f, over 1", total);
    return ESIM_OK;
}

/* ------------------------------------------------------- connections */

static void stream_free(mock_stream *st)
{
    for (int i = 0; i < H_COUNT; i++)
        free(st->hdr[i]);
    free(st->body);
    free(st->push_magic);
    free(st);
}

static void conn_free(mock_conn *mc)
{
    apns_mock *m = mc->m;
    if (mc->prev)
        mc->prev->next = mc->next;
    else
        m->conns = mc->next;
    if (mc->next)
        mc->next->prev = mc->prev;
    /* Delayed answers of a closed connection were never given, so those
     * pushes were not accepted and are not delivered. */
    if (mc->h2)
        nghttp2_session_del(mc->h2);
    while (mc->streams) {
        mock_stream *st = mc->streams;
        mc->streams = st->next_all;
        stream_free(st);
    }
    if (mc->bev)
        bufferevent_free(mc->bev);
    if (mc->delay_timer)
        event_free(mc->delay_timer);
    if (mc->linger_timer)
        event_free(mc->linger_timer);
    free(mc);
}

static void linger_expired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn_free(arg); /* the client never closed its end */
}

/*
 * Ends the mock's side of a connection whose every answer is written (out of
 * our buffers, into the kernel): shut the socket for writing, so a FIN follows
 * the last byte, then keep reading and discarding until the client closes its
 * end (mc_event frees it) or LINGER_MS pass.
 *
 * Never close() at this point. The client does not know yet that we are
 * done: until it reads our GOAWAY it keeps sending requests on the
 * connection. Data arriving at a closed socket makes the kernel answer with a
 * TCP RST; the client's next write then fails, and a client (ours, OpenSSL
 * after a failed write, most HTTP/2 stacks) drops the connection without
 * reading what is still in its receive buffer: the GOAWAY and the 200s we
 * gave. Those pushes were delivered, yet the client must count them as lost
 * with the connection and send them again: every push of the last batch
 * reached the device twice (issue 15). Lingering is what a real server does
 * (RFC 9112 §9.6 describes the same hazard); Apple's APNs answers every
 * stream at or below a GOAWAY's last-stream-id and lets the client read it.
 */
static void conn_linger(mock_conn *mc)
{
    evutil_socket_t fd = bufferevent_getfd(mc->bev);
    if (fd >= 0)
        shutdown(fd, SHUT_WR);
    mc->half_closed = true;
    struct timeval tv = {.tv_sec = LINGER_MS / 1000, .tv_usec = (LINGER_MS % 1000) * 1000};
    if (mc->linger_timer == NULL)
        mc->linger_timer = evtimer_new(mc->m->base, linger_expired, mc);
    if (mc->linger_timer == NULL || evtimer_add(mc->linger_timer, &tv) != 0)
        conn_free(mc);
}

static bool conn_flush(mock_conn *mc)
{
    return apns_h2_flush(mc->h2, mc->bev);
}

/* Ends our side of the connection (conn_linger()) once every byte is out and
 * either HTTP/2 is done with it (GOAWAY sent and no stream left) or it is
 * being reset.
 *
 * The "reset" fault ends a connection without GOAWAY, the same way: answers
 * already given are flushed first, so the client sees every 200 it was given
 * (no push is delivered without its 200 reaching the client) and loses only
 * the unanswered streams. */
static void conn_maybe_close(mock_conn *mc)
{
    if (mc->half_closed)
        return;
    if (evbuffer_get_length(bufferevent_get_output(mc->bev)) != 0)
        return;
    if (mc->resetting) {
        mc->m->stats.resets++;
        conn_linger(mc);
    } else if (!nghttp2_session_want_read(mc->h2) && !nghttp2_session_want_write(mc->h2)) {
        conn_linger(mc);
    }
}

/* ---------------------------------------------------------- answers */

static ssize_t read_resp(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
                         uint32_t *data_flags, nghttp2_data_source *source, void *arg)
{
    (void)s;
    (void)stream_id;
    (void)arg;
    mock_stream *st = source->ptr;
    size_t n = st->resp_len - st->resp_off;
    if (n > length)
        n = length;
    memcpy(buf, st->resp_body + st->resp_off, n);
    st->resp_off += n;
    if (st->resp_off == st->resp_len)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

#define NVS(n, v, vl)                                                                              \
    (nghttp2_nv)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl),                                       \
            NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE                           \
    }

/* Gives the answer now. An accepted MDM push is delivered at this moment:
 * before it the client has no 200, after it the push exists for the device. */
static void give_answer(mock_stream *st)
{
    mock_conn *mc = st->mc;
    apns_mock *m = mc->m;
    char status_text[4] = {(char)('0' + st->status / 100 % 10), (char)('0' + st->status / 10 % 10),
                           (char)('0' + st->status % 10), '\0'};
    nghttp2_nv nva[3] = {
        {(uint8_t *)":status", (uint8_t *)status_text, 7, 3, NGHTTP2_NV_FLAG_NO_COPY_NAME},
        NVS("apns-id", st->resp_id, ESIM_UUID_LEN),
        NVS("content-type", "application/json", 16),
    };
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_resp};
    if (nghttp2_submit_response(mc->h2, st->id, nva, st->resp_len ? 3 : 2,
                                st->resp_len ? &dp : NULL) != 0)
        return;
    m->stats.status[st->status / 100 <= 5 ? st->status / 100 : 5]++;
    if (st->status == 200) {
        m->stats.accepted++;
        if (st->push_magic)
            mock_deliver(m, st->deliver_to, st->hdr[H_PATH] + 10, st->push_magic,
                         st->hdr[H_TOPIC] ? st->hdr[H_TOPIC] : mc->cert_topic, st->resp_id);
    } else if (m->cfg.drop_streams_on_reject && !mc->streams_dropped) {
        /* APNs lowers its stream limit to 1 on a connection that misbehaves. */
        nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1};
        nghttp2_submit_settings(mc->h2, NGHTTP2_FLAG_NONE, &iv, 1);
        mc->streams_dropped = true;
    }
}

static void delay_fired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    mock_conn *mc = arg;
    int64_t now = esim_mono_ms();
    if (mc->half_closed)
        return;
    while (!mc->resetting && mc->delayed_head && mc->delayed_head->due_ms <= now) {
        mock_stream *st = mc->delayed_head;
        mc->delayed_head = st->next_delayed;
        if (mc->delayed_head == NULL)
            mc->delayed_tail = NULL;
        st->next_delayed = NULL;
        st->due_ms = -1; /* answered */
        give_answer(st);
    }
    if (mc->delayed_head && !mc->resetting) {
        int64_t wait = mc->delayed_head->due_ms - now;
        struct timeval tv = {.tv_sec = (time_t)(wait / 1000),
                             .tv_usec = (suseconds_t)(wait % 1000) * 1000};
        evtimer_add(mc->delay_timer, &tv);
    }
    if (!conn_flush(mc)) {
        conn_free(mc);
        return;
    }
    conn_maybe_close(mc);
}

static void answer(mock_stream *st, int status, const char *reason, int64_t timestamp_ms)
{
    mock_conn *mc = st->mc;
    apns_mock *m = mc->m;
    st->status = status;
    if (st->hdr[H_ID] && esim_uuid_valid(st->hdr[H_ID]))
        snprintf(st->resp_id, sizeof st->resp_id, "%s", st->hdr[H_ID]);
    else
        apns_uuid_fast(&m->rng, st->resp_id); /* APNs assigns one when none was sent */
    if (status != 200) {
        int n = timestamp_ms
                    ? snprintf(st->resp_body, sizeof st->resp_body,
                               "{\"reason\":\"%s\",\"timestamp\":%lld}", reason,
                               (long long)timestamp_ms)
                    : snprintf(st->resp_body, sizeof st->resp_body, "{\"reason\":\"%s\"}", reason);
        st->resp_len = (size_t)n;
    }
    if (m->cfg.delay_ms == 0) {
        give_answer(st);
        return;
    }
    st->due_ms = esim_mono_ms() + m->cfg.delay_ms;
    if (mc->delayed_tail)
        mc->delayed_tail->next_delayed = st;
    else
        mc->delayed_head = st;
    mc->delayed_tail = st;
    if (!evtimer_pending(mc->delay_timer, NULL)) {
        struct timeval tv = {.tv_sec = m->cfg.delay_ms / 1000,
                             .tv_usec = (m->cfg.delay_ms % 1000) * 1000};
        evtimer_add(mc->delay_timer, &tv);
    }
}

/* ------------------------------------------------------- validation */

static bool all_digits(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

static bool push_type_known(const char *t)
{
    static const char *const types[] = {"alert",        "background",   "location", "voip",
                                        "complication", "fileprovider", "mdm",      "liveactivity",
                                        "pushtotalk",   "controls",     "widgets"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(t, types[i]) == 0)
            return true;
    return false;
}

/* The provider-token check of a connection without a client certificate. */
static const char *check_provider_token(apns_mock *m, mock_stream *st)
{
    const char *auth = st->hdr[H_AUTH];
    if (auth == NULL)
        return m->token_key ? "MissingProviderToken" : NULL;
    if (strncasecmp(auth, "bearer ", 7) != 0)
        return "InvalidProviderToken";
    const char *jwt = auth + 7;
    if (m->jwts.count < 100000 && apns_map_get(&m->jwts, jwt) == NULL &&
        apns_map_put(&m->jwts, jwt, (void *)1, NULL) == ESIM_OK)
        m->stats.distinct_jwts++;
    switch (apns_jwt_verify(jwt, strlen(jwt), m->token_key, esim_now_ms() / 1000)) {
    case APNS_JWT_OK:
        return NULL;
    case APNS_JWT_EXPIRED:
        return "ExpiredProviderToken";
    default:
        return "InvalidProviderToken";
    }
}

/* APNs' checks, in the order it reports them. Returns the status; *reason
 * is set for anything but 200. */
static int validate(mock_stream *st, const char **reason, int64_t *ts, const char **topic_out)
{
    mock_conn *mc = st->mc;
    apns_mock *m = mc->m;
    char **h = st->hdr;
    *ts = 0;
    if (st->duplicate)
        return *reason = "DuplicateHeaders", 400;
    if (h[H_METHOD] == NULL || strcmp(h[H_METHOD], "POST") != 0)
        return *reason = "MethodNotAllowed", 405;
    if (h[H_PATH] == NULL || strncmp(h[H_PATH], "/3/device/", 10) != 0)
        return *reason = "BadPath", 404;
    const char *token = h[H_PATH] + 10;
    if (*token == '\0')
        return *reason = "MissingDeviceToken", 400;
    if (!apns_token_ok(token, strlen(token)))
        return *reason = "BadDeviceToken", 400;
    if (mc->kind == PORT_MTLS && !mc->has_cert_uid)
        return *reason = "BadCertificate", 403;
    if (mc->kind != PORT_MTLS) {
        const char *why = check_provider_token(m, st);
        if (why)
            return *reason = why, 403;
    }
    if (h[H_ID] && !esim_uuid_valid(h[H_ID]))
        return *reason = "BadMessageId", 400;
    const char *topic = h[H_TOPIC];
    if (topic == NULL && mc->kind == PORT_MTLS)
        topic = mc->cert_topic; /* one topic in the certificate: APNs defaults to it */
    if (topic == NULL || *topic == '\0')
        return *reason = "MissingTopic", 400;
    if (mc->kind == PORT_MTLS && strcmp(topic, mc->cert_topic) != 0)
        return *reason = "TopicDisallowed", 400;
    if (mc->kind != PORT_MTLS && m->topic && strcmp(topic, m->topic) != 0)
        return *reason = "TopicDisallowed", 400;
    *topic_out = topic;
    if (h[H_PUSH_TYPE] == NULL || !push_type_known(h[H_PUSH_TYPE]))
        return *reason = "InvalidPushType", 400;
    bool mdm_topic = strncmp(topic, "com.apple.mgmt.", 15) == 0;
    if (mdm_topic != (strcmp(h[H_PUSH_TYPE], "mdm") == 0))
        return *reason = "InvalidPushType", 400;
    if (h[H_PRIORITY] && strcmp(h[H_PRIORITY], "10") != 0 && strcmp(h[H_PRIORITY], "5") != 0 &&
        strcmp(h[H_PRIORITY], "1") != 0)
        return *reason = "BadPriority", 400;
    if (h[H_EXPIRATION] && (!all_digits(h[H_EXPIRATION]) || strlen(h[H_EXPIRATION]) > 12))
        return *reason = "BadExpirationDate", 400;
    if (h[H_COLLAPSE] && strlen(h[H_COLLAPSE]) > 64)
        return *reason = "BadCollapseId", 400;
    if (st->body_too_big)
        return *reason = "PayloadTooLarge", 413;
    if (st->body_len == 0)
        return *reason = "PayloadEmpty", 400;
    token_info *ti = mock_token(m, token, false);
    if (ti && ti->dead_since_ms) {
        *ts = ti->dead_since_ms;
        return *reason = "Unregistered", 410;
    }
    if (ti && ti->topic && strcmp(ti->topic, topic) != 0)
        return *reason = "DeviceTokenNotForTopic", 400;
    return 200;
}

/* An MDM body must be a JSON object with an "mdm" string: the PushMagic. */
static char *mdm_push_magic(const mock_stream *st)
{
    json_t *j = json_loadb((const char *)st->body, st->body_len, 0, NULL);
    const char *magic = json_string_value(json_object_get(j, "mdm"));
    char *copy = magic && *magic ? strdup(magic) : NULL;
    json_decref(j);
    return copy;
}

static void process_request(mock_stream *st)
{
    mock_conn *mc = st->mc;
    apns_mock *m = mc->m;
    if (mc->resetting)
        return; /* this connection is about to die: never answered, never delivered */
    if (mc->goaway_sent && st->id > mc->goaway_last) {
        /* Above the GOAWAY's last-stream-id: not processed, the client may
         * safely send it again elsewhere. */
        m->stats.refused++;
        nghttp2_submit_rst_stream(mc->h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
        return;
    }
    m->stats.requests++;
    mc->requests++;
    if (st->id > mc->highest_processed)
        mc->highest_processed = st->id;
    if (m->cfg.reset_every && mc->requests % m->cfg.reset_every == 0) {
        mc->resetting = true;
        return;
    }
    if (m->cfg.benchmark) {
        answer(st, 200, NULL, 0);
    } else {
        const char *reason = NULL, *topic = NULL;
        int64_t ts = 0;
        int status = validate(st, &reason, &ts, &topic);
        if (status == 200 && strcmp(st->hdr[H_PUSH_TYPE], "mdm") == 0) {
            st->push_magic = mdm_push_magic(st);
            if (st->push_magic == NULL)
                status = 400, reason = "BadPayload"; /* mock-specific: not an MDM body */
        }
        if (status == 200 && m->cfg.fail_rate_count) {
            double draw = apns_rng_unit(&m->rng), acc = 0;
            for (int i = 0; i < m->cfg.fail_rate_count; i++) {
                acc += m->cfg.fail_rate[i].rate;
                if (draw < acc) {
                    status = m->cfg.fail_rate[i].status;
                    reason = apns_default_reason(status);
                    m->stats.injected++;
                    break;
                }
            }
        }
        if (status == 200 && st->push_magic) {
            token_info *ti = mock_token(m, st->hdr[H_PATH] + 10, false);
            st->deliver_to = ti;
            if (ti && ti->ch && ti->ch->count >= m->cfg.delivery_cap) {
                m->stats.backlog_full++;
                status = 429, reason = "TooManyRequests";
            }
        }
        answer(st, status, reason, ts);
    }
    if (m->cfg.goaway_every && mc->requests % m->cfg.goaway_every == 0 && !mc->goaway_sent) {
        static const char debug[] = "{\"reason\":\"Shutdown\"}";
        /* RFC 7540 §6.8: last-stream-id is the highest stream that may have
         * been processed. Streams complete out of id order when the client
         * interleaves frames, so a higher one may already be answered and
         * delivered: naming st->id would make the client re-send it. Lower
         * ones still open are processed when they complete. */
        mc->goaway_sent = true;
        mc->goaway_last = mc->highest_processed;
        m->stats.goaways++;
        nghttp2_submit_goaway(mc->h2, NGHTTP2_FLAG_NONE, mc->goaway_last, NGHTTP2_NO_ERROR,
                              (const uint8_t *)debug, sizeof debug - 1);
    }
}

/* ---------------------------------------------------- nghttp2 callbacks */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    mock_conn *mc = arg;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    mock_stream *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->mc = mc;
    st->id = frame->hd.stream_id;
    st->due_ms = -1;
    nghttp2_session_set_stream_user_data(s, st->id, st);
    st->next_all = mc->streams;
    if (mc->streams)
        mc->streams->prev_all = st;
    mc->streams = st;
    mc->open_streams++;
    if (mc->open_streams > mc->m->stats.max_concurrent)
        mc->m->stats.max_concurrent = mc->open_streams;
    return 0;
}

static int header_index(const uint8_t *name, size_t len)
{
    static const char *const names[H_COUNT] = {
        ":method",         ":path",   "apns-topic",       "apns-push-type", "apns-priority",
        "apns-expiration", "apns-id", "apns-collapse-id", "authorization"};
    for (int i = 0; i < H_COUNT; i++)
        if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
            return i;
    return -1;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *arg)
{
    (void)flags;
    mock_conn *mc = arg;
    mock_stream *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (st == NULL || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (mc->m->cfg.benchmark) {
        if (namelen == 7 && memcmp(name, "apns-id", 7) == 0 && valuelen == ESIM_UUID_LEN) {
            st->hdr[H_ID] = strndup((const char *)value, valuelen);
            st->seen |= 1u << H_ID;
        }
        return 0;
    }
    int i = header_index(name, namelen);
    if (i < 0)
        return 0;
    if (st->seen & (1u << i)) {
        st->duplicate = true;
        return 0;
    }
    st->seen |= 1u << i;
    if (valuelen > 8192)
        valuelen = 8192;
    st->hdr[i] = strndup((const char *)value, valuelen);
    if (st->hdr[i] == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                   size_t len, void *arg)
{
    (void)flags;
    mock_conn *mc = arg;
    mock_stream *st = nghttp2_session_get_stream_user_data(s, stream_id);
    if (st == NULL)
        return 0;
    if (mc->m->cfg.benchmark) {
        st->body_len += len;
        return 0;
    }
    if (st->body_too_big || st->body_len + len > MAX_PAYLOAD) {
        st->body_too_big = true; /* keep reading, answer 413 at the end */
        return 0;
    }
    if (st->body == NULL && (st->body = malloc(MAX_PAYLOAD)) == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    memcpy(st->body + st->body_len, data, len);
    st->body_len += len;
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *arg)
{
    (void)arg;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        mock_stream *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
        if (st && !st->complete) {
            st->complete = true;
            process_request(st);
        }
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *arg)
{
    (void)error_code;
    mock_conn *mc = arg;
    mock_stream *st = nghttp2_session_get_stream_user_data(s, stream_id);
    if (st == NULL)
        return 0;
    mc->open_streams--;
    if (st->due_ms >= 0) {
        /* Still waiting for its delayed answer: unlink it. */
        mock_stream **pp = &mc->delayed_head;
        mock_stream *prev = NULL;
        while (*pp && *pp != st)
            prev = *pp, pp = &(*pp)->next_delayed;
        if (*pp) {
            *pp = st->next_delayed;
            if (mc->delayed_tail == st)
                mc->delayed_tail = prev;
        }
    }
    if (st->prev_all)
        st->prev_all->next_all = st->next_all;
    else
        mc->streams = st->next_all;
    if (st->next_all)
        st->next_all->prev_all = st->prev_all;
    stream_free(st);
    return 0;
}

/* ------------------------------------------------------ socket glue */

static void mc_read(struct bufferevent *bev, void *arg)
{
    mock_conn *mc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    if (mc->half_closed) {
        /* Lingering: whatever the client still sends was sent before it
         * read our GOAWAY (or our FIN) and is not processed. */
        evbuffer_drain(in, len);
        return;
    }
    unsigned char *data = evbuffer_pullup(in, -1);
    ssize_t n = nghttp2_session_mem_recv(mc->h2, data, len);
    if (n < 0) {
        conn_free(mc);
        return;
    }
    evbuffer_drain(in, (size_t)n);
    if (!conn_flush(mc)) {
        conn_free(mc);
        return;
    }
    conn_maybe_close(mc);
}

static void mc_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_maybe_close(arg);
}

static void mc_event(struct bufferevent *bev, short events, void *arg)
{
    mock_conn *mc = arg;
    if (events & BEV_EVENT_CONNECTED) {
        mc->handshake_done = true;
        if (mc->kind == PORT_MTLS) {
            /* The client certificate chained to client_ca (OpenSSL checked);
             * its subject UID is the one topic this connection may push to. */
            X509 *peer = SSL_get0_peer_certificate(bufferevent_openssl_get_ssl(bev));
            mc->has_cert_uid = peer && esim_cert_subject_field(peer, NID_userId, mc->cert_topic,
                                                               sizeof mc->cert_topic) == ESIM_OK;
            if (!mc->has_cert_uid)
                mc->cert_topic[0] = '\0';
        }
        return;
    }
    if (events & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        if (mc->kind != PORT_H2C && !mc->handshake_done)
            mc->m->stats.tls_refused++; /* no certificate, unknown CA, no h2 */
        while (mc->kind != PORT_H2C && bufferevent_get_openssl_error(bev))
            ;
        conn_free(mc);
    }
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg);

static esim_err conn_session_new(mock_conn *mc)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return ESIM_ENOMEM;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    int rv = nghttp2_session_server_new(&mc->h2, cbs, mc);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        return ESIM_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, mc->m->cfg.max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
    };
    if (nghttp2_submit_settings(mc->h2, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
        nghttp2_session_set_local_window_size(mc->h2, NGHTTP2_FLAG_NONE, 0, 1 << 24) != 0)
        return ESIM_ENOMEM;
    return conn_flush(mc) ? ESIM_OK : ESIM_EIO;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    (void)sa;
    (void)salen;
    apns_mock *m = arg;
    port_kind kind = PORT_H2C;
    for (int i = 0; i < 3; i++)
        if (m->listeners[i] == l)
            kind = (port_kind)i;
    m->stats.connections++;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    mock_conn *mc = calloc(1, sizeof *mc);
    if (mc == NULL) {
        evutil_closesocket(fd);
        return;
    }
    mc->m = m;
    mc->kind = kind;
    mc->next = m->conns;
    if (m->conns)
        m->conns->prev = mc;
    m->conns = mc;
    int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    if (kind == PORT_H2C) {
        mc->bev = bufferevent_socket_new(m->base, fd, opts);
    } else {
        SSL *ssl = SSL_new(kind == PORT_MTLS ? m->ssl_mtls : m->ssl_open);
        mc->bev =
            ssl ? bufferevent_openssl_socket_new(m->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, opts)
                : NULL;
        if (mc->bev == NULL)
            SSL_free(ssl);
    }
    mc->delay_timer = evtimer_new(m->base, delay_fired, mc);
    if (mc->bev == NULL || mc->delay_timer == NULL) {
        if (mc->bev == NULL)
            evutil_closesocket(fd);
        conn_free(mc);
        return;
    }
    bufferevent_setcb(mc->bev, mc_read, mc_write, mc_event, mc);
    bufferevent_enable(mc->bev, EV_READ | EV_WRITE);
    if (conn_session_new(mc) != ESIM_OK)
        conn_free(mc);
}

/* ------------------------------------------------------------ life */

static esim_err listen_on(apns_mock *m, int which, const char *addr, esim_error *err)
{
    struct sockaddr_storage ss;
    socklen_t len;
    esim_err e = apns_addr_parse(addr, &ss, &len, err);
    if (e != ESIM_OK)
        return e;
    m->listeners[which] =
        evconnlistener_new_bind(m->base, on_accept, m, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                512, (struct sockaddr *)&ss, (int)len);
    if (m->listeners[which] == NULL)
        return esim_fail(err, ESIM_EIO, "cannot listen on %s: %s", addr,
                         evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    m->ports[which] = apns_bound_port(evconnlistener_get_fd(m->listeners[which]));
    if (m->ports[which] == 0)
        return esim_fail(err, ESIM_EIO, "cannot read the port bound for %s", addr);
    return ESIM_OK;
}

static esim_err load_dead_tokens(apns_mock *m, const char *path, esim_error *err)
{
    esim_buf text = {0};
    esim_err e = esim_read_file(path, 256u << 20, &text, err);
    if (e != ESIM_OK)
        return e;
    int64_t now = esim_now_ms();
    char *line = (char *)text.data;
    for (int lineno = 1; e == ESIM_OK && line && *line; lineno++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        size_t n = strcspn(p, " \t\r#");
        char *rest = p + n;
        while (*rest && isspace((unsigned char)*rest))
            rest++;
        if (n > 0) {
            p[n] = '\0';
            if (!apns_token_ok(p, n) || (*rest && *rest != '#'))
                e = esim_fail(err, ESIM_EINVAL,
                              "%s line %d: expected one device token (64 to 200 hex digits)", path,
                              lineno);
            else
                e = apns_mock_add_dead_token(m, p, err);
            (void)now;
        } else if (*rest && *rest != '#' && *p != '#') {
            e = esim_fail(err, ESIM_EINVAL, "%s line %d: unexpected text", path, lineno);
        }
        line = nl ? nl + 1 : NULL;
    }
    esim_buf_free(&text);
    return e;
}

esim_err apns_mock_add_dead_token(apns_mock *m, const char *token, esim_error *err)
{
    if (token == NULL || !apns_token_ok(token, strlen(token)))
        return esim_fail(err, ESIM_EINVAL, "'%.80s' is not a device token (64 to 200 hex digits)",
                         token ? token : "");
    token_info *ti = mock_token(m, token, true);
    if (ti == NULL)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    ti->dead_since_ms = esim_now_ms();
    return ESIM_OK;
}

esim_err apns_mock_new(struct event_base *base, const apns_mock_config *cfg, apns_mock **out,
                       esim_error *err)
{
    *out = NULL;
    if (base == NULL || cfg == NULL)
        return esim_fail(err, ESIM_EINVAL, "apns_mock_new needs a base and a config");
    if (!cfg->listen && !cfg->open_listen && !cfg->h2c_listen)
        return esim_fail(err, ESIM_EINVAL,
                         "the APNs mock needs at least one of listen, open_listen, h2c_listen");
    if ((cfg->listen || cfg->open_listen) && (!cfg->tls_cert || !cfg->tls_key))
        return esim_fail(err, ESIM_EINVAL, "TLS ports need tls_cert and tls_key");
    if (cfg->listen && !cfg->client_ca)
        return esim_fail(err, ESIM_EINVAL,
                         "the client-certificate port needs client_ca (the CA push certificates "
                         "chain to)");
    if (cfg->max_streams < 1 || cfg->delivery_cap < 1)
        return esim_fail(err, ESIM_EINVAL, "max_streams and delivery_cap must be at least 1");
    if (cfg->fail_rate_count < 0 || cfg->fail_rate_count > 8)
        return esim_fail(err, ESIM_EINVAL, "fail_rate_count must be 0 to 8");
    double total = 0;
    for (int i = 0; i < cfg->fail_rate_count; i++) {
        if (cfg->fail_rate[i].status < 400 || cfg->fail_rate[i].status > 599 ||
            !(cfg->fail_rate[i].rate >= 0 && cfg->fail_rate[i].rate <= 1))
            return esim_fail(err, ESIM_EINVAL, "fail rate %d: status 400..599, rate 0..1", i + 1);
        total += cfg->fail_rate[i].rate;
    }
    if (total > 1.0 + 1e-9)
        return esim_fail(err, ESIM_EINVAL, "fail rates add up to more than 1");
    apns_mock *m = calloc(1, sizeof *m);
    if (m == NULL)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    m->base = base;
    m->cfg = *cfg;
    m->cfg.listen = m->cfg.tls_cert = m->cfg.tls_key = m->cfg.client_ca = NULL;
    m->cfg.open_listen = m->cfg.h2c_listen = m->cfg.delivery_listen = NULL;
    m->cfg.topic = m->cfg.dead_tokens_path = m->cfg.token_key_path = NULL;
    apns_map_init(&m->tokens);
    apns_map_init(&m->channels);
    apns_map_init(&m->jwts);
    apns_rng_seed(&m->rng, cfg->seed);
    esim_err e = ESIM_OK;
    if (cfg->topic && (m->topic = strdup(cfg->topic)) == NULL)
        e = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (e == ESIM_OK && cfg->listen)
        e = apns_tls_server_ctx(cfg->tls_cert, cfg->tls_key, cfg->client_ca, &m->ssl_mtls, err);
    if (e == ESIM_OK && cfg->open_listen)
        e = apns_tls_server_ctx(cfg->tls_cert, cfg->tls_key, NULL, &m->ssl_open, err);
    if (e == ESIM_OK && cfg->token_key_path)
        e = apns_jwt_load_verify_key(cfg->token_key_path, &m->token_key, err);
    if (e == ESIM_OK && cfg->dead_tokens_path)
        e = load_dead_tokens(m, cfg->dead_tokens_path, err);
    if (e == ESIM_OK && cfg->listen)
        e = listen_on(m, PORT_MTLS, cfg->listen, err);
    if (e == ESIM_OK && cfg->open_listen)
        e = listen_on(m, PORT_OPEN, cfg->open_listen, err);
    if (e == ESIM_OK && cfg->h2c_listen)
        e = listen_on(m, PORT_H2C, cfg->h2c_listen, err);
    if (e == ESIM_OK && cfg->delivery_listen)
        e = mock_delivery_start(m, cfg->delivery_listen, err);
    if (e != ESIM_OK) {
        apns_mock_free(m);
        return e;
    }
    *out = m;
    return ESIM_OK;
}

int apns_mock_port(const apns_mock *m, apns_mock_port_kind which)
{
    if (m == NULL || (int)which < 0 || (int)which > 3)
        return 0;
    return m->ports[which];
}

void apns_mock_stats_get(const apns_mock *m, apns_mock_stats *out)
{
    *out = m->stats;
}

void apns_mock_free(apns_mock *m)
{
    if (m == NULL)
        return;
    mock_delivery_stop(m);
    for (int i = 0; i < 3; i++)
        if (m->listeners[i])
            evconnlistener_free(m->listeners[i]);
    while (m->conns)
        conn_free(m->conns);
    SSL_CTX_free(m->ssl_mtls);
    SSL_CTX_free(m->ssl_open);
    EVP_PKEY_free(m->token_key);
    apns_map_clear(&m->tokens, mock_token_info_free);
    apns_map_clear(&m->channels, mock_channel_free);
    apns_map_clear(&m->jwts, NULL);
    free(m->topic);
    free(m);
}
