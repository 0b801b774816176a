/*
 * devsim.c — the simulator runtime: N virtual devices in one thread on one
 * libevent loop. Each enrols (Authenticate, TokenUpdate), registers its push
 * token with the APNs mock's delivery channel, and on a push checks in and
 * works through its command queue over HTTP, exactly as an iPhone does.
 * Misbehaviour (locked, offline, busy eUICC) is drawn per device from a seed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "core/internal.h"
#include "plist/esim_plist.h"
#include "sim/sim_internal.h"

#define TICK_MS 50
#define REGISTER_BATCH 2000
#define LONGPOLL_WAIT_MS 20000
#define RETRY_MS 1000
/* An instance of the service that did not answer is skipped this long. */
#define URL_DOWN_MS 5000

enum {
    F_QUEUED = 1u << 0,       /* waiting in the check-in queue */
    F_BUSY = 1u << 1,         /* a check-in, enrolment or download is in flight */
    F_PUSH_PENDING = 1u << 2, /* a push arrived while busy or offline */
    F_OFFLINE = 1u << 3,
    F_REGISTERED = 1u << 4, /* its current token is on the mock's channel */
    F_NEED_REG = 1u << 5,
    F_ENROLL_QUEUED = 1u << 6,   /* waiting in the enrolment queue */
    F_LOCK_ON_PUSH = 1u << 7,    /* NotNow share: locked when the first command comes */
    F_OFFLINE_ON_PUSH = 1u << 8, /* offline share: out of coverage when the first push comes */
};

typedef struct {
    sim_device *dev;
    sim_http_conn *conn;  /* the phone's own connection, during a session only */
    sim_tls_session *tls; /* its TLS session with the service, kept between sessions */
    sim_lpa_link *es9;    /* its LPA's connection and TLS session with the SM-DP+ */
    uint32_t flags;
    uint8_t retries;
    /* A command answer whose PUT got no reply (the service died, or the
     * connection broke): an iPhone sends it again before anything else,
     * rather than asking for (and running) the command again. */
    esim_buf *unanswered;
} slot;

typedef enum { TIMED_ONLINE, TIMED_UNLOCK, TIMED_ENROLL, TIMED_CHECKIN } timed_kind;

typedef struct {
    int64_t due;
    size_t slot;
    timed_kind kind;
} timed;

struct sim_devsim {
    struct event_base *base;
    /* Enrolments the service refused, the last one's words (the /stats
     * "enrolment_refused" object), and the hook told of a new reason. */
    size_t enrol_refused;
    long refused_status;
    char refused_udid[65], refused_reason[300];
    void (*on_enrol_refused)(void *arg, const char *udid, long status, const char *reason);
    void *enrol_refused_arg;
    sim_pki *pki;
    sim_http *http;
    char mdm_url[8][1024]; /* the instances of the service, used in turn */
    size_t n_mdm_urls;
    uint64_t next_url;         /* requests sent so far: which instance is next */
    int64_t url_down_until[8]; /* an instance that refused a connection is left alone a while */
    char apns_url[512];
    char channel[128];
    char data_dir[SIM_PATH_MAX];
    bool https_server;
    bool tls_client_auth;
    bool no_identity;
    unsigned max_concurrent, offline_ms, notnow_ms;
    slot *slots;
    size_t n;
    size_t *token_idx; /* open addressing on the token: slot + 1; 0 empty */
    size_t token_cap;
    size_t *queue; /* ring of slots waiting to check in */
    size_t q_head, q_len;
    size_t *equeue; /* ring of slots waiting to enrol */
    size_t e_head, e_len;
    size_t active; /* sessions in flight */
    /* How many may be in flight now (at most max_concurrent): one more per
     * prompt answer, halved (at most once a second) when the service answers
     * slowly or not at all, so an overloaded service is not buried under
     * handshakes that time out and are all made again. */
    double window;
    int64_t window_cut_at;
    timed *timers;
    size_t n_timers, cap_timers;
    struct event *tick;
    /* Serves the session queues in the loop's next turn: a place freed or a
     * pushed device queued does not wait for the tick. */
    struct event *kick;
    bool registering;
    size_t need_reg;      /* devices flagged F_NEED_REG: the tick skips the scan when 0 */
    int64_t reg_retry_at; /* after a failed registration, not before this */
    bool polling;
    uint64_t after_seq;
    int64_t poll_retry_at;
    struct evhttp *status;
    uint16_t status_port;
    sim_devsim_stats stats;
    sim_winfleet *win;     /* the Windows PCs (winfleet.c); NULL when none */
    sim_iotfleet *iot;     /* the IoT devices (iotfleet.c); NULL when none */
    char win_url[8][2100]; /* the PCs' OMA-DM endpoint at each instance */
};

/* ---- identities ------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sim_devsim_identity(uint64_t seed, unsigned i, char udid[65], char eid[ESIM_EID_LEN + 1])
{
    uint64_t x = seed * 1000003ull + i;
    /* The 8-16 form of newer iPhones' UDIDs. */
    snprintf(udid, 65, "00008110-%016llX", (unsigned long long)splitmix64(&x));
    /* EID: a test EUM prefix, the seed, the index, then check digits. */
    snprintf(eid, ESIM_EID_LEN + 1, "890490320000%06llu%012u00",
             (unsigned long long)(seed % 1000000), i);
    esim_eid_set_check_digits(eid, NULL);
}

void sim_devsim_windows_id(uint64_t seed, unsigned i, char id[65])
{
    uint64_t x = seed * 7919ull + i + 0x57494e00ull;
    uint64_t a = splitmix64(&x), b = splitmix64(&x);
    snprintf(id, 65, "%016llX%016llX", (unsigned long long)a, (unsigned long long)b);
}

bool sim_devsim_is_windows(unsigned devices, unsigned pcs, unsigned i)
{
    if (devices == 0 || pcs == 0 || i >= devices)
        return false;
    /* Spread evenly: device i is a PC when floor((i+1)*pcs/devices) steps up. */
    return ((uint64_t)(i + 1) * pcs) / devices > ((uint64_t)i * pcs) / devices;
}

static double unit_draw(uint64_t *x)
{
    return (double)(splitmix64(x) >> 11) / 9007199254740992.0;
}

/* ---- token index ---------------------------------------------------------------------- */

static size_t token_hash(const unsigned char *t)
{
    uint64_t h;
    memcpy(&h, t, sizeof h);
    return (size_t)h;
}

static void token_put(sim_devsim *s, size_t i)
{
    size_t len;
    const unsigned char *t = sim_device_push_token(s->slots[i].dev, &len);
    size_t k = token_hash(t) & (s->token_cap - 1);
    while (s->token_idx[k] != 0 && s->token_idx[k] != SIZE_MAX)
        k = (k + 1) & (s->token_cap - 1);
    s->token_idx[k] = i + 1;
}

static size_t token_find(const sim_devsim *s, const unsigned char *t)
{
    for (size_t k = token_hash(t) & (s->token_cap - 1);; k = (k + 1) & (s->token_cap - 1)) {
        size_t v = s->token_idx[k];
        if (v == 0)
            return SIZE_MAX;
        if (v != SIZE_MAX) {
            size_t len;
            if (memcmp(sim_device_push_token(s->slots[v - 1].dev, &len), t, 32) == 0)
                return v - 1;
        }
    }
}

/* Before a device's token changes: leave a tombstone where it was. */
static void token_forget(sim_devsim *s, size_t i)
{
    size_t len;
    const unsigned char *t = sim_device_push_token(s->slots[i].dev, &len);
    for (size_t k = token_hash(t) & (s->token_cap - 1); s->token_idx[k] != 0;
         k = (k + 1) & (s->token_cap - 1))
        if (s->token_idx[k] == i + 1) {
            s->token_idx[k] = SIZE_MAX;
            return;
        }
}

/* ---- persistence ----------------------------------------------------------------------- */

static void device_path(const sim_devsim *s, const sim_device *d, char *out, size_t n)
{
    snprintf(out, n, "%s/devices/%s.json", s->data_dir, sim_device_udid(d));
}

/* State files are written only when something changed. */
static void save_if_dirty(sim_devsim *s, size_t i)
{
    sim_device *d = s->slots[i].dev;
    if (!s->data_dir[0] || !sim_device_dirty(d))
        return;
    char path[SIM_PATH_MAX + 128];
    device_path(s, d, path, sizeof path);
    sim_device_save(d, path, NULL); /* a failed write is retried at the next change */
}

/* ---- timers and queue ---------------------------------------------------------------------- */

static void at(sim_devsim *s, int64_t delay_ms, size_t i, timed_kind kind)
{
    if (s->n_timers == s->cap_timers) {
        timed *t = esim_grow(s->timers, &s->cap_timers, s->n_timers + 1, sizeof *t);
        if (!t)
            return;
        s->timers = t;
    }
    s->timers[s->n_timers++] = (timed){esim_mono_ms() + delay_ms, i, kind};
}

/* The device's current token must be (re-)registered on the mock's channel. */
static void mark_need_reg(sim_devsim *s, size_t i)
{
    if (!(s->slots[i].flags & F_NEED_REG)) {
        s->slots[i].flags |= F_NEED_REG;
        s->need_reg++;
    }
}

/* The queues are served in the loop's next turn (start_queued), never from
 * inside the callback that freed a place or queued a device: that callback
 * may still be using the slot. */
static void kick(sim_devsim *s)
{
    if (s->kick)
        event_active(s->kick, EV_TIMEOUT, 1);
}

/* The iPhone's slot by UDID; SIZE_MAX when none. */
static size_t slot_of(const sim_devsim *s, const char *udid)
{
    for (size_t i = 0; udid && i < s->n; i++)
        if (strcmp(sim_device_udid(s->slots[i].dev), udid) == 0)
            return i;
    return SIZE_MAX;
}

static void want_checkin(sim_devsim *s, size_t i)
{
    slot *sl = &s->slots[i];
    if (!sim_device_enrolled(sl->dev))
        return;
    if (sl->flags & (F_BUSY | F_OFFLINE)) {
        sl->flags |= F_PUSH_PENDING; /* handled when it is free or back online */
        return;
    }
    if (sl->flags & F_QUEUED)
        return;
    sl->flags |= F_QUEUED;
    s->queue[(s->q_head + s->q_len++) % s->n] = i;
    /* Behind the cap (or the window): it waits for a session to end. */
    if (s->active >= s->max_concurrent || (double)s->active >= s->window)
        s->stats.checkins_waited++;
    else
        kick(s);
}

/* ---- HTTP to the service ----------------------------------------------------------------------
 */

typedef enum { REQ_AUTH, REQ_TOKEN, REQ_CHECKIN } req_kind;

typedef struct {
    sim_devsim *s;
    size_t slot;
    req_kind kind;
    char uuid[128]; /* the command being answered, for a download */
    bool erase_after, preserve_data_plan;
    size_t url;          /* which instance of the service it went to */
    bool carries_answer; /* the body answers a command (slot.unanswered) */
    int64_t sent_ms;     /* when the request went (esim_mono_ms) */
} req_ctx;

static void on_service_reply(void *arg, sim_http_response *r);
static void session_end(sim_devsim *s, size_t i);
static void start_download(req_ctx *ctx, const char *url);

static esim_err put_to_service(req_ctx *ctx, const esim_buf *body, bool checkin_msg)
{
    sim_devsim *s = ctx->s;
    sim_device *d = s->slots[ctx->slot].dev;
    esim_buf sig = {0};
    char sig_hdr[8192];
    const char *hdrs[3];
    size_t nh = 0;
    hdrs[nh++] = checkin_msg ? "Content-Type: application/x-apple-aspen-mdm-checkin"
                             : "Content-Type: application/x-apple-aspen-mdm";
    hdrs[nh++] = "User-Agent: MDM/1.0";
    const esim_buf *id = NULL;
    esim_err rc = ESIM_OK;
    if (s->tls_client_auth) {
        /* The identity as the phone holds it: in memory, sent (with the
         * issuing CA) when a full handshake asks for it. */
        rc = sim_device_identity(d, &id, NULL);
    } else if (!s->no_identity) {
        rc = sim_device_sign(d, body->data, body->len, &sig, NULL);
        if (rc == ESIM_OK && sig.len + 32 < sizeof sig_hdr) {
            snprintf(sig_hdr, sizeof sig_hdr, "Mdm-Signature: %s", (const char *)sig.data);
            hdrs[nh++] = sig_hdr;
        }
    }
    esim_buf_free(&sig);
    if (rc != ESIM_OK)
        return rc;
    /* As a load balancer would: the next instance in turn, skipping one
     * that just failed to answer at all (a dead instance). */
    int64_t now = esim_mono_ms();
    ctx->url = s->next_url++ % s->n_mdm_urls;
    for (size_t k = 0; k < s->n_mdm_urls && s->url_down_until[ctx->url] > now; k++)
        ctx->url = s->next_url++ % s->n_mdm_urls;
    ctx->sent_ms = now;
    sim_http_request req = {.method = "PUT",
                            .url = s->mdm_url[ctx->url],
                            .headers = hdrs,
                            .n_headers = nh,
                            .body = body->data,
                            .body_len = body->len,
                            .ca_file = s->https_server ? sim_pki_ca_file(s->pki) : NULL,
                            .client_cert_der = id ? id->data : NULL,
                            .client_cert_der_len = id ? id->len : 0,
                            .client_chain_der = id ? s->pki->scep_der.data : NULL,
                            .client_chain_der_len = id ? s->pki->scep_der.len : 0,
                            .client_key_p256 = id ? sim_device_identity_key(d) : NULL,
                            .timeout_ms = 30000,
                            .conn = s->slots[ctx->slot].conn,
                            .tls = s->https_server ? &s->slots[ctx->slot].tls : NULL};
    return sim_http_send(s->http, &req, on_service_reply, ctx, NULL);
}

/* A session (enrolment, or a check-in until the queue is empty) runs on the
 * phone's own connection, opened for it and closed after it. */
static bool session_begin(sim_devsim *s, size_t i)
{
    slot *sl = &s->slots[i];
    if (!sl->conn && sim_http_conn_new(&sl->conn, NULL) != ESIM_OK)
        return false;
    sl->flags |= F_BUSY;
    s->active++;
    return true;
}

static void enroll_start(sim_devsim *s, size_t i)
{
    slot *sl = &s->slots[i];
    sim_device *d = sl->dev;
    if (sl->flags & F_BUSY)
        return;
    esim_authenticate_info info = {.udid = sim_device_udid(d),
                                   .topic = sim_pki_topic(s->pki),
                                   .os_version = sim_device_os_version(d),
                                   .build_version = "22B83",
                                   .product_name = sim_device_product_name(d),
                                   .serial_number = sim_device_serial(d),
                                   .imei = sim_device_imei(d),
                                   .device_name = "Simulated iPhone",
                                   .model = "MTUW3LL/A"};
    esim_buf body = {0};
    req_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx || esim_msg_build_authenticate(&info, &body, NULL) != ESIM_OK) {
        free(ctx);
        esim_buf_free(&body);
        at(s, RETRY_MS, i, TIMED_ENROLL);
        return;
    }
    *ctx = (req_ctx){.s = s, .slot = i, .kind = REQ_AUTH};
    if (!session_begin(s, i) || put_to_service(ctx, &body, true) != ESIM_OK) {
        free(ctx);
        session_end(s, i);
        at(s, RETRY_MS, i, TIMED_ENROLL);
    }
    esim_buf_free(&body);
}

static void checkin_start(sim_devsim *s, size_t i)
{
    slot *sl = &s->slots[i];
    sl->flags &= ~(F_QUEUED | F_PUSH_PENDING);
    esim_buf body = {0};
    req_ctx *ctx = calloc(1, sizeof *ctx);
    bool answer = sl->unanswered != NULL;
    /* A woken device first says Idle (or sends again the answer that got
     * no reply); the answer is its next command. */
    if (!ctx ||
        (answer ? esim_buf_append(&body, sl->unanswered->data, sl->unanswered->len)
                : esim_msg_build_result(sim_device_udid(sl->dev), ESIM_STATUS_IDLE, NULL, NULL, 0,
                                        NULL, ESIM_PLIST_XML, &body, NULL)) != ESIM_OK) {
        free(ctx);
        esim_buf_free(&body);
        at(s, RETRY_MS, i, TIMED_CHECKIN);
        return;
    }
    *ctx = (req_ctx){.s = s, .slot = i, .kind = REQ_CHECKIN, .carries_answer = answer};
    s->stats.checkins++;
    if (!session_begin(s, i) || put_to_service(ctx, &body, false) != ESIM_OK) {
        free(ctx);
        session_end(s, i);
        at(s, RETRY_MS, i, TIMED_CHECKIN);
    }
    esim_buf_free(&body);
}

static void session_end(sim_devsim *s, size_t i)
{
    slot *sl = &s->slots[i];
    if (sl->flags & F_BUSY) {
        sl->flags &= ~F_BUSY;
        s->active--;
        if (s->q_len > 0 || s->e_len > 0)
            kick(s); /* the place goes to the next in line at once */
    }
    sim_http_conn_free(sl->conn);
    sl->conn = NULL;
    /* Parsed keys live as long as a session, not as long as 100,000 phones. */
    sim_euicc_release_key(sim_device_euicc(sl->dev));
    save_if_dirty(s, i);
    if ((sl->flags & F_PUSH_PENDING) && !(sl->flags & F_OFFLINE))
        want_checkin(s, i);
}

/* Sends |result| (a command answer) and keeps the session going. */
static void send_result(req_ctx *ctx, esim_buf *result)
{
    req_ctx *next = calloc(1, sizeof *next);
    if (!next) {
        session_end(ctx->s, ctx->slot);
        return;
    }
    *next = (req_ctx){.s = ctx->s,
                      .slot = ctx->slot,
                      .kind = REQ_CHECKIN,
                      .erase_after = ctx->erase_after,
                      .preserve_data_plan = ctx->preserve_data_plan};
    /* Kept until the service replies (an erase's answer is not: the phone
     * wipes itself either way). */
    slot *sl = &ctx->s->slots[ctx->slot];
    if (!ctx->erase_after) {
        if (!sl->unanswered)
            sl->unanswered = calloc(1, sizeof *sl->unanswered);
        if (sl->unanswered) {
            sl->unanswered->len = 0;
            if (esim_buf_append(sl->unanswered, result->data, result->len) == ESIM_OK)
                next->carries_answer = true;
        }
    }
    if (put_to_service(next, result, false) != ESIM_OK) {
        free(next);
        ctx->s->stats.http_errors++;
        session_end(ctx->s, ctx->slot);
    }
}

/* Counts an answer by the Status the device put in it (known where the
 * answer was built: nothing is parsed again). */
static void count_status(sim_devsim *s, esim_status st)
{
    if (st == ESIM_STATUS_ACKNOWLEDGED)
        s->stats.acknowledged++;
    else if (st == ESIM_STATUS_NOT_NOW)
        s->stats.not_now++;
    else
        s->stats.errors++;
}

static void after_action_notifications(void *arg, size_t still);

/* A wiped phone is a new device to every server: no token registered, no
 * push owed, and a full TLS handshake with each (no session resumed). */
static void identity_renewed(slot *sl)
{
    sl->flags &= ~(F_REGISTERED | F_PUSH_PENDING);
    sim_tls_session_forget(sl->tls);
    sim_lpa_link_forget(sl->es9);
}

static void reenroll_after_erase(sim_devsim *s, size_t i, bool keep_esim)
{
    slot *sl = &s->slots[i];
    token_forget(s, i);
    sim_device_erase(sl->dev, keep_esim);
    token_put(s, i);
    identity_renewed(sl);
    save_if_dirty(s, i);
    /* A reset eUICC owes its SM-DP+s the delete notifications. */
    if (sim_euicc_notification_count(sim_device_euicc(sl->dev)) > 0)
        sim_lpa_send_notifications(s->http, sim_device_euicc(sl->dev), &sl->es9,
                                   sim_pki_ca_file(s->pki), after_action_notifications, NULL, NULL);
    /* The wiped phone goes through setup and enrols again. */
    at(s, 200, i, TIMED_ENROLL);
}

static void handle_command(req_ctx *ctx, sim_http_response *r)
{
    sim_devsim *s = ctx->s;
    slot *sl = &s->slots[ctx->slot];
    sim_cmd_outcome o;
    s->stats.commands++;
    if (sl->flags & F_LOCK_ON_PUSH) { /* locked at its first command, for notnow_ms */
        sl->flags &= ~F_LOCK_ON_PUSH;
        at(s, s->notnow_ms, ctx->slot, TIMED_UNLOCK);
    }
    if (sim_device_handle_command(sl->dev, r->body.data, r->body.len, &o, NULL) != ESIM_OK) {
        sim_cmd_outcome_free(&o);
        session_end(s, ctx->slot);
        free(ctx);
        return;
    }
    if (o.download) {
        snprintf(ctx->uuid, sizeof ctx->uuid, "%s", o.command_uuid);
        sim_cmd_outcome_free(&o);
        start_download(ctx, o.esim_server_url);
        return;
    }
    count_status(s, o.status);
    ctx->erase_after = o.erase;
    ctx->preserve_data_plan = o.preserve_data_plan;
    send_result(ctx, &o.result);
    sim_cmd_outcome_free(&o);
    free(ctx);
}

/* The service's reason for refusing an enrolment, from its answer: the
 * message of a JSON error object, or the text, on one line. */
static void note_enrol_refused(sim_devsim *s, const char *udid, const sim_http_response *r)
{
    char reason[300] = "";
    if (r->err != ESIM_OK) {
        snprintf(reason, sizeof reason, "no answer: %s", r->errmsg);
    } else {
        json_t *j = r->body.len && r->body.data[0] == '{'
                        ? json_loadb((const char *)r->body.data, r->body.len, 0, NULL)
                        : NULL;
        const char *msg =
            json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        if (msg)
            snprintf(reason, sizeof reason, "%s", msg);
        else
            snprintf(reason, sizeof reason, "%.*s", (int)(r->body.len < 299 ? r->body.len : 299),
                     r->body.len ? (const char *)r->body.data : "");
        json_decref(j);
        for (char *c = reason; *c; c++)
            if ((unsigned char)*c < 0x20)
                *c = ' ';
        size_t n = strlen(reason);
        while (n && reason[n - 1] == ' ')
            reason[--n] = '\0';
        if (!n)
            snprintf(reason, sizeof reason, "HTTP %ld without a reason", r->status);
    }
    s->enrol_refused++;
    bool fresh = strcmp(reason, s->refused_reason) != 0 || r->status != s->refused_status;
    s->refused_status = r->err == ESIM_OK ? r->status : 0;
    snprintf(s->refused_udid, sizeof s->refused_udid, "%s", udid);
    snprintf(s->refused_reason, sizeof s->refused_reason, "%s", reason);
    if (fresh && s->on_enrol_refused)
        s->on_enrol_refused(s->enrol_refused_arg, udid, s->refused_status, reason);
}

static void drop_unanswered(slot *sl)
{
    if (sl->unanswered) {
        esim_buf_free(sl->unanswered);
        free(sl->unanswered);
        sl->unanswered = NULL;
    }
}

/* An answer within SLOW_ANSWER_MS opens the window by one session; a
 * slower one, or none (a timeout, a failed connection or handshake), halves
 * it, at most once a second (the answers of one burst say the same). */
#define SLOW_ANSWER_MS 5000 /* half of the connection timeout */
#define MIN_WINDOW 8.0

static void window_feedback(sim_devsim *s, const req_ctx *ctx, const sim_http_response *r)
{
    int64_t now = esim_mono_ms();
    bool answered = r->err == ESIM_OK && r->status != 503;
    if (answered && now - ctx->sent_ms < SLOW_ANSWER_MS) {
        s->window += 1.0;
        if (s->window > (double)s->max_concurrent)
            s->window = (double)s->max_concurrent;
        return;
    }
    if (r->err == ESIM_ETOOBIG || now - s->window_cut_at < 1000)
        return;
    s->window_cut_at = now;
    s->window /= 2.0;
    if (s->window < MIN_WINDOW)
        s->window = MIN_WINDOW;
}

static void on_service_reply(void *arg, sim_http_response *r)
{
    req_ctx *ctx = arg;
    sim_devsim *s = ctx->s;
    size_t i = ctx->slot;
    slot *sl = &s->slots[i];
    window_feedback(s, ctx, r);
    if (r->err != ESIM_OK || r->status != 200) {
        s->stats.http_errors++;
        if (r->err != ESIM_OK && s->n_mdm_urls > 1)
            s->url_down_until[ctx->url] = esim_mono_ms() + URL_DOWN_MS;
        /* Refused (4xx): the service read it and will not take it; sending
         * it again would not help. Otherwise it goes again. */
        if (ctx->carries_answer && r->err == ESIM_OK && r->status >= 400 && r->status < 500)
            drop_unanswered(sl);
        bool enrolling = ctx->kind != REQ_CHECKIN;
        if (enrolling)
            note_enrol_refused(s, sim_device_udid(sl->dev), r);
        free(ctx);
        session_end(s, i);
        /* Enrolment is retried for ever with back-off (1 s doubling to 64 s);
         * a failed check-in three times, then the next push. */
        if (enrolling || sl->retries < 3) {
            unsigned shift = sl->retries < 6 ? sl->retries : 6;
            if (sl->retries < 255)
                sl->retries++;
            at(s, (int64_t)RETRY_MS << (enrolling ? shift : 0), i,
               enrolling ? TIMED_ENROLL : TIMED_CHECKIN);
        } else {
            sl->retries = 0;
        }
        return;
    }
    sl->retries = 0;
    if (ctx->carries_answer)
        drop_unanswered(sl);
    if (ctx->kind == REQ_AUTH) {
        size_t tl;
        const unsigned char *tok = sim_device_push_token(sl->dev, &tl);
        esim_buf body = {0};
        ctx->kind = REQ_TOKEN;
        if (esim_msg_build_token_update(sim_device_udid(sl->dev), sim_pki_topic(s->pki), tok, tl,
                                        sim_device_push_magic(sl->dev), &body, NULL) != ESIM_OK ||
            put_to_service(ctx, &body, true) != ESIM_OK) {
            free(ctx);
            session_end(s, i);
            at(s, RETRY_MS, i, TIMED_ENROLL);
        }
        esim_buf_free(&body);
        return;
    }
    if (ctx->kind == REQ_TOKEN) {
        free(ctx);
        sim_device_set_enrolled(sl->dev, true);
        s->stats.enrolled++;
        if (!(sl->flags & F_REGISTERED)) /* registered first: no check-in needed */
            mark_need_reg(s, i);
        session_end(s, i);
        return;
    }
    /* A check-in answer: a command, or an empty body when the queue is empty. */
    if (ctx->erase_after) {
        /* EraseDevice was acknowledged: the device wipes now and does not
         * answer again. */
        bool keep = ctx->preserve_data_plan;
        free(ctx);
        session_end(s, i);
        reenroll_after_erase(s, i, keep);
        return;
    }
    if (r->body.len == 0) {
        free(ctx);
        session_end(s, i);
        return;
    }
    handle_command(ctx, r);
}

/* ---- RefreshCellularPlans: the LPA, then the answer
 * ----------------------------------------------- */

typedef struct {
    req_ctx *ctx;
    esim_buf result;
} dl_ctx;

static void after_notifications(void *arg, size_t still)
{
    (void)still;
    dl_ctx *dc = arg;
    send_result(dc->ctx, &dc->result);
    esim_buf_free(&dc->result);
    free(dc->ctx);
    free(dc);
}

static void after_download(void *arg, const sim_download_result *r)
{
    req_ctx *ctx = arg;
    sim_devsim *s = ctx->s;
    sim_device *d = s->slots[ctx->slot].dev;
    dl_ctx *dc = calloc(1, sizeof *dc);
    if (!dc) {
        session_end(s, ctx->slot);
        free(ctx);
        return;
    }
    dc->ctx = ctx;
    if (r->err == ESIM_OK)
        s->stats.downloads_ok++;
    else
        s->stats.downloads_failed++;
    esim_status st = ESIM_STATUS_ERROR;
    if (sim_device_finish_download(d, ctx->uuid, r, &dc->result, &st, NULL) != ESIM_OK) {
        esim_buf_free(&dc->result);
        free(dc);
        session_end(s, ctx->slot);
        free(ctx);
        return;
    }
    count_status(s, st);
    save_if_dirty(s, ctx->slot);
    /* Install and enable notifications go to the SM-DP+ before the device
     * reports back, so "Acknowledged" means the operator knows too. */
    if (sim_lpa_send_notifications(s->http, sim_device_euicc(d), &s->slots[ctx->slot].es9,
                                   sim_pki_ca_file(s->pki), after_notifications, dc,
                                   NULL) != ESIM_OK)
        after_notifications(dc, 0);
}

static void start_download(req_ctx *ctx, const char *url)
{
    sim_devsim *s = ctx->s;
    sim_device *d = s->slots[ctx->slot].dev;
    esim_error err;
    if (sim_lpa_download(s->http, sim_device_euicc(d), &s->slots[ctx->slot].es9, url,
                         sim_pki_ca_file(s->pki), NULL, after_download, ctx, &err) != ESIM_OK) {
        sim_download_result r = {.err = ESIM_EINVAL};
        snprintf(r.message, sizeof r.message, "%.250s", err.msg);
        after_download(ctx, &r);
    }
}

/* ---- APNs mock: token registration and deliveries
 * --------------------------------------------------- */

typedef struct {
    sim_devsim *s;
    size_t *slots;
    size_t n;
} reg_ctx;

static void on_registered(void *arg, sim_http_response *r)
{
    reg_ctx *rc = arg;
    sim_devsim *s = rc->s;
    s->registering = false;
    bool ok = r->err == ESIM_OK && r->status == 200;
    for (size_t k = 0; k < rc->n; k++) {
        slot *sl = &s->slots[rc->slots[k]];
        if (!ok) {
            mark_need_reg(s, rc->slots[k]);
            continue;
        }
        sl->flags |= F_REGISTERED;
        /* A device that enrolled before its token reached the mock checks
         * in once, so nothing pushed meanwhile is missed (want_checkin does
         * nothing for one not enrolled yet: the usual case, registered
         * first). */
        want_checkin(s, rc->slots[k]);
    }
    if (!ok) {
        s->stats.http_errors++;
        s->reg_retry_at = esim_mono_ms() + RETRY_MS;
    }
    free(rc->slots);
    free(rc);
}

static void register_tokens(sim_devsim *s)
{
    if (s->registering || s->need_reg == 0 || !s->apns_url[0] || esim_mono_ms() < s->reg_retry_at)
        return;
    json_t *tokens = json_array();
    reg_ctx *rc = calloc(1, sizeof *rc);
    if (!tokens || !rc || !(rc->slots = calloc(REGISTER_BATCH, sizeof *rc->slots))) {
        json_decref(tokens);
        if (rc)
            free(rc->slots);
        free(rc);
        return;
    }
    rc->s = s;
    for (size_t i = 0; i < s->n && rc->n < REGISTER_BATCH; i++) {
        slot *sl = &s->slots[i];
        if (!(sl->flags & F_NEED_REG))
            continue;
        size_t tl;
        const unsigned char *t = sim_device_push_token(sl->dev, &tl);
        esim_buf hex = {0};
        esim_hex_encode(t, tl, &hex);
        json_array_append_new(tokens, json_string((const char *)hex.data));
        esim_buf_free(&hex);
        sl->flags &= ~F_NEED_REG;
        s->need_reg--;
        rc->slots[rc->n++] = i;
    }
    if (rc->n == 0) {
        json_decref(tokens);
        free(rc->slots);
        free(rc);
        return;
    }
    json_t *body = json_pack("{s:o, s:s}", "tokens", tokens, "topic", sim_pki_topic(s->pki));
    char *txt = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    char url[700];
    snprintf(url, sizeof url, "%s/tokens?channel=%s", s->apns_url, s->channel);
    static const char *const hdrs[] = {"Content-Type: application/json"};
    sim_http_request req = {.method = "POST",
                            .url = url,
                            .headers = hdrs,
                            .n_headers = 1,
                            .body = txt,
                            .body_len = txt ? strlen(txt) : 0,
                            .timeout_ms = 30000};
    s->registering = true;
    if (!txt || sim_http_send(s->http, &req, on_registered, rc, NULL) != ESIM_OK) {
        sim_http_response fail = {.err = ESIM_EUNAVAIL};
        on_registered(rc, &fail);
    }
    free(txt);
}

/* The misbehaving shares act up when the campaign reaches them: a phone in
 * the offline share misses its first push and comes back later (a phone in
 * the NotNow share is locked at its first command; see handle_command). */
static void on_push(sim_devsim *s, size_t i)
{
    slot *sl = &s->slots[i];
    if (sl->flags & F_OFFLINE_ON_PUSH) {
        sl->flags = (sl->flags & ~F_OFFLINE_ON_PUSH) | F_OFFLINE;
        at(s, s->offline_ms, i, TIMED_ONLINE);
    }
    want_checkin(s, i);
}

static void poll_deliveries(sim_devsim *s);

static void on_deliveries(void *arg, sim_http_response *r)
{
    sim_devsim *s = arg;
    s->polling = false;
    json_t *j = r->err == ESIM_OK && r->status == 200
                    ? sim_json_loadb((const char *)r->body.data, r->body.len)
                    : NULL;
    json_t *pushes = json_object_get(j, "pushes"), *next = json_object_get(j, "next");
    if (!json_is_array(pushes) || !json_is_integer(next)) {
        s->stats.http_errors++;
        s->poll_retry_at = esim_mono_ms() + RETRY_MS;
        json_decref(j);
        return;
    }
    s->after_seq = (uint64_t)json_integer_value(next);
    size_t k;
    json_t *p;
    json_array_foreach(pushes, k, p)
    {
        esim_buf tok = {0};
        const char *hex = sim_json_str(p, "token"), *magic = sim_json_str(p, "push_magic");
        size_t i = hex && esim_hex_decode(hex, &tok, NULL) == ESIM_OK && tok.len == 32
                       ? token_find(s, tok.data)
                       : SIZE_MAX;
        esim_buf_free(&tok);
        /* A device only answers a push carrying its own PushMagic. */
        if (i != SIZE_MAX && magic && strcmp(magic, sim_device_push_magic(s->slots[i].dev)) == 0) {
            s->stats.pushes++;
            on_push(s, i);
        } else
            s->stats.stray_pushes++;
    }
    json_decref(j);
    /* The next long-poll at once, as a push client's connection stays
     * open: a push does not wait for the tick to be fetched. */
    poll_deliveries(s);
}

static void poll_deliveries(sim_devsim *s)
{
    if (s->polling || !s->apns_url[0] || esim_mono_ms() < s->poll_retry_at)
        return;
    char url[800];
    snprintf(url, sizeof url, "%s/deliveries?channel=%s&after=%llu&wait_ms=%d&limit=5000",
             s->apns_url, s->channel, (unsigned long long)s->after_seq, LONGPOLL_WAIT_MS);
    sim_http_request req = {.method = "GET", .url = url, .timeout_ms = LONGPOLL_WAIT_MS + 10000};
    if (sim_http_send(s->http, &req, on_deliveries, s, NULL) == ESIM_OK)
        s->polling = true;
    else
        s->poll_retry_at = esim_mono_ms() + RETRY_MS;
}

/* ---- the tick ----------------------------------------------------------------------------------
 */

static void run_timers(sim_devsim *s)
{
    int64_t now = esim_mono_ms();
    for (size_t k = 0; k < s->n_timers;) {
        if (s->timers[k].due > now) {
            k++;
            continue;
        }
        timed t = s->timers[k];
        s->timers[k] = s->timers[--s->n_timers];
        slot *sl = &s->slots[t.slot];
        switch (t.kind) {
        case TIMED_ONLINE:
            /* Back in coverage: the device checks in if it missed a push. */
            sl->flags &= ~F_OFFLINE;
            if (sl->flags & F_PUSH_PENDING)
                want_checkin(s, t.slot);
            break;
        case TIMED_UNLOCK: {
            sim_device_quirks q = {0};
            sim_device_set_quirks(sl->dev, &q);
            /* iOS checks in again when unlocked after answering NotNow. */
            want_checkin(s, t.slot);
            break;
        }
        case TIMED_ENROLL:
            if (!sim_device_enrolled(sl->dev) && !(sl->flags & F_ENROLL_QUEUED)) {
                sl->flags |= F_ENROLL_QUEUED;
                s->equeue[(s->e_head + s->e_len++) % s->n] = t.slot;
            }
            break;
        case TIMED_CHECKIN:
            want_checkin(s, t.slot);
            break;
        }
    }
}

/* Starts what waits for a session place, within the cap and the window:
 * enrolments and check-ins share them, taking turns. */
static void start_queued(sim_devsim *s)
{
    bool enrol_turn = false;
    while ((s->q_len > 0 || s->e_len > 0) && s->active < s->max_concurrent &&
           (double)s->active < s->window) {
        enrol_turn = s->e_len > 0 && (!enrol_turn || s->q_len == 0);
        if (enrol_turn) {
            size_t i = s->equeue[s->e_head];
            s->e_head = (s->e_head + 1) % s->n;
            s->e_len--;
            s->slots[i].flags &= ~F_ENROLL_QUEUED;
            if (!sim_device_enrolled(s->slots[i].dev) && !(s->slots[i].flags & F_BUSY))
                enroll_start(s, i);
            else if (s->slots[i].flags & F_BUSY)
                at(s, RETRY_MS, i, TIMED_ENROLL);
            continue;
        }
        size_t i = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % s->n;
        s->q_len--;
        slot *sl = &s->slots[i];
        sl->flags &= ~F_QUEUED;
        if (!sim_device_enrolled(sl->dev)) /* wiped while it waited: it enrols first */
            continue;
        if (sl->flags & (F_BUSY | F_OFFLINE)) {
            sl->flags |= F_PUSH_PENDING;
            continue;
        }
        checkin_start(s, i);
    }
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    start_queued(arg);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sim_devsim *s = arg;
    run_timers(s);
    register_tokens(s);
    poll_deliveries(s);
    sim_winfleet_tick(s->win);
    start_queued(s);
}

/* ---- status endpoint ---------------------------------------------------------------------------
 */

static json_t *stats_json(const sim_devsim *s)
{
    const sim_devsim_stats *t = &s->stats;
    size_t with_esim = 0, enrolled = 0;
    for (size_t i = 0; i < s->n; i++) {
        enrolled += sim_device_enrolled(s->slots[i].dev);
        with_esim += sim_euicc_enabled(sim_device_euicc_const(s->slots[i].dev)) != NULL;
    }
    sim_devsim_stats w = sim_devsim_get_stats(s);
    json_t *j =
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "devices",
                  (json_int_t)w.devices, "enrolled_now", (json_int_t)enrolled, "esim_enabled",
                  (json_int_t)with_esim, "enrolments", (json_int_t)t->enrolled, "pushes",
                  (json_int_t)t->pushes, "checkins", (json_int_t)t->checkins, "commands",
                  (json_int_t)t->commands, "acknowledged", (json_int_t)t->acknowledged, "errors",
                  (json_int_t)t->errors, "not_now", (json_int_t)t->not_now, "downloads_ok",
                  (json_int_t)t->downloads_ok, "downloads_failed", (json_int_t)t->downloads_failed,
                  "http_errors", (json_int_t)w.http_errors);
    if (j) {
        json_object_set_new(j, "window", json_integer((json_int_t)s->window));
        json_object_set_new(j, "max_concurrent", json_integer((json_int_t)s->max_concurrent));
        json_object_set_new(j, "sessions_now", json_integer((json_int_t)w.sessions_now));
        json_object_set_new(j, "checkins_waiting", json_integer((json_int_t)w.checkins_waiting));
        json_object_set_new(j, "checkins_waited", json_integer((json_int_t)w.checkins_waited));
        json_object_set_new(j, "stray_pushes", json_integer((json_int_t)w.stray_pushes));
    }
    /* Every TLS connection the simulator opened (to the service, the
     * SM-DP+, the mocks): full handshakes, resumed ones, and client
     * certificates sent (in full handshakes only). */
    if (j)
        json_object_set_new(j, "tls",
                            json_pack("{s:I, s:I, s:I, s:I}", "full", (json_int_t)w.tls_full,
                                      "resumed", (json_int_t)w.tls_resumed, "client_certificates",
                                      (json_int_t)w.tls_client_certs, "chains_verified",
                                      (json_int_t)w.tls_chains_verified));
    if (j && s->enrol_refused)
        json_object_set_new(j, "enrolment_refused",
                            json_pack("{s:I, s:s, s:I, s:s}", "count", (json_int_t)s->enrol_refused,
                                      "udid", s->refused_udid, "status",
                                      (json_int_t)s->refused_status, "reason", s->refused_reason));
    if (j && s->win) {
        /* Windows PCs: known = had at least one session. */
        size_t known = 0, pc_esim = 0, with_channel = 0;
        for (size_t i = 0; i < w.windows_pcs; i++) {
            sim_winpc *pc = sim_winfleet_at(s->win, i);
            known += sim_winpc_sessions(pc) > 0;
            pc_esim += sim_euicc_enabled(sim_winpc_euicc_const(pc)) != NULL;
            with_channel += sim_winpc_channel_uri(pc) != NULL;
        }
        json_object_set_new(
            j, "windows",
            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "pcs",
                      (json_int_t)w.windows_pcs, "known", (json_int_t)known, "esim_enabled",
                      (json_int_t)pc_esim, "with_channel", (json_int_t)with_channel, "sessions",
                      (json_int_t)w.win_sessions, "session_errors",
                      (json_int_t)w.win_session_errors, "messages", (json_int_t)w.win_messages,
                      "wns_pushes", (json_int_t)w.wns_pushes, "wns_channels",
                      (json_int_t)w.wns_channels, "wns_expired", (json_int_t)w.wns_expired,
                      "downloads_ok", (json_int_t)w.win_downloads_ok, "downloads_failed",
                      (json_int_t)w.win_downloads_failed, "resets", (json_int_t)w.win_resets));
        json_object_set_new(json_object_get(j, "windows"), "stray_wns_pushes",
                            json_integer((json_int_t)w.stray_wns_pushes));
    }
    if (j && s->iot) {
        const sim_iotfleet_stats *o = &w.iot;
        json_t *iot = json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "devices",
            (json_int_t)o->devices, "offline_now", (json_int_t)o->offline_now, "cycles",
            (json_int_t)o->cycles, "cycle_errors", (json_int_t)o->cycle_errors, "polls",
            (json_int_t)o->polls, "packages_ok", (json_int_t)o->packages_ok, "packages_refused",
            (json_int_t)o->packages_refused, "package_errors", (json_int_t)o->package_errors,
            "data_requests", (json_int_t)o->data_requests, "downloads_ok",
            (json_int_t)o->downloads_ok, "downloads_failed", (json_int_t)o->downloads_failed);
        if (iot) {
            json_object_set_new(iot, "acknowledged", json_integer((json_int_t)o->acknowledged));
            json_object_set_new(iot, "registered", json_integer((json_int_t)o->registered));
            json_object_set_new(iot, "already_registered",
                                json_integer((json_int_t)o->already_registered));
            json_object_set_new(iot, "register_errors",
                                json_integer((json_int_t)o->register_errors));
        }
        json_object_set_new(j, "iot", iot);
    }
    return j;
}

static void status_reply(struct evhttp_request *req, int code, const char *json_text)
{
    struct evbuffer *out = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    if (out && json_text)
        evbuffer_add(out, json_text, strlen(json_text));
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", out);
    if (out)
        evbuffer_free(out);
}

static void status_reply_json(struct evhttp_request *req, int code, json_t *j)
{
    char *t = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    status_reply(req, code, t ? t : "{}");
    free(t);
    json_decref(j);
}

/* GET /devices/ID, POST /devices/ID/sync, POST /devices/ID/actions/delete-esim
 * for a Windows PC. */
static void on_status_windows(sim_devsim *s, struct evhttp_request *req, sim_winpc *pc,
                              const char *rest, enum evhttp_cmd_type m)
{
    esim_error err;
    const char *id = sim_winpc_device_id(pc);
    if (!rest && m == EVHTTP_REQ_GET) {
        esim_buf b = {0};
        sim_winpc_describe_json(pc, &b, NULL);
        status_reply(req, 200, (const char *)b.data);
        esim_buf_free(&b);
        return;
    }
    if (rest && strcmp(rest, "/sync") == 0 && m == EVHTTP_REQ_POST) {
        sim_devsim_windows_sync(s, id, &err);
        status_reply_json(req, 200, json_pack("{s:s, s:b}", "device_id", id, "sync", 1));
        return;
    }
    if (rest && strncmp(rest, "/actions/", 9) == 0 && m == EVHTTP_REQ_POST) {
        sim_user_action a;
        if (sim_user_action_parse(rest + 9, &a, &err) != ESIM_OK) {
            status_reply_json(req, 400, json_pack("{s:s}", "error", err.msg));
            return;
        }
        sim_action_outcome o = {0};
        esim_err rc = sim_devsim_user_action(s, id, a, &o, &err);
        if (rc == ESIM_EINVAL) {
            status_reply_json(req, 400, json_pack("{s:s}", "error", err.msg));
            return;
        }
        esim_buf b = {0};
        sim_winpc_describe_json(pc, &b, NULL);
        json_t *dj = json_loads((const char *)b.data, 0, NULL);
        esim_buf_free(&b);
        status_reply_json(req, rc == ESIM_OK || rc == ESIM_ESTATE ? 200 : 500,
                          json_pack("{s:s, s:b, s:b, s:b, s:s, s:o?}", "action",
                                    sim_user_action_name(a), "allowed", o.allowed, "erased", 0,
                                    "esim_kept", 0, "reason", o.reason, "device", dj));
        return;
    }
    status_reply_json(req, 404, json_pack("{s:s}", "error", "not found"));
}

static void on_status(struct evhttp_request *req, void *arg)
{
    sim_devsim *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    char path[256];
    size_t n = strcspn(uri, "?");
    if (n >= sizeof path) {
        status_reply_json(req, 404, json_pack("{s:s}", "error", "not found"));
        return;
    }
    memcpy(path, uri, n);
    path[n] = '\0';
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (strcmp(path, "/stats") == 0) {
        status_reply_json(req, 200, stats_json(s));
        return;
    }
    if (strcmp(path, "/devices") == 0) {
        json_t *arr = json_array();
        for (size_t i = 0; i < s->n; i++) {
            sim_device *d = s->slots[i].dev;
            const sim_profile *p = sim_euicc_enabled(sim_device_euicc_const(d));
            json_array_append_new(
                arr, json_pack("{s:s, s:s, s:b, s:s?}", "udid", sim_device_udid(d), "eid",
                               sim_euicc_eid(sim_device_euicc_const(d)), "enrolled",
                               sim_device_enrolled(d), "iccid", p ? p->iccid : NULL));
        }
        for (size_t i = 0; i < sim_winfleet_count(s->win); i++) {
            sim_winpc *pc = sim_winfleet_at(s->win, i);
            const sim_profile *p = sim_euicc_enabled(sim_winpc_euicc_const(pc));
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s, s:b, s:s?, s:s?}", "platform",
                                                 "windows", "device_id", sim_winpc_device_id(pc),
                                                 "eid", sim_euicc_eid(sim_winpc_euicc_const(pc)),
                                                 "enrolled", sim_winpc_sessions(pc) > 0, "iccid",
                                                 p ? p->iccid : NULL, "channel_uri",
                                                 sim_winpc_channel_uri(pc)));
        }
        status_reply_json(req, 200, json_pack("{s:o}", "devices", arr));
        return;
    }
    if (strncmp(path, "/devices/", 9) == 0) {
        char udid[65];
        const char *rest = path + 9, *slash = strchr(rest, '/');
        size_t ul = slash ? (size_t)(slash - rest) : strlen(rest);
        if (ul == 0 || ul >= sizeof udid) {
            status_reply_json(req, 404, json_pack("{s:s}", "error", "no such device"));
            return;
        }
        memcpy(udid, rest, ul);
        udid[ul] = '\0';
        sim_winpc *pc = sim_devsim_find_windows(s, udid);
        if (pc) {
            on_status_windows(s, req, pc, slash, m);
            return;
        }
        size_t di = slot_of(s, udid);
        sim_device *d = di != SIZE_MAX ? s->slots[di].dev : NULL;
        if (!d) {
            status_reply_json(req, 404, json_pack("{s:s}", "error", "no such device"));
            return;
        }
        if (!slash && m == EVHTTP_REQ_GET) {
            esim_buf b = {0};
            sim_device_describe_json(d, &b, NULL);
            status_reply(req, 200, (const char *)b.data);
            esim_buf_free(&b);
            return;
        }
        if (slash && strcmp(slash, "/sync") == 0 && m == EVHTTP_REQ_POST) {
            /* A check-in as a push would start one (an enrolled phone). */
            bool enrolled = sim_device_enrolled(d);
            if (enrolled)
                want_checkin(s, di);
            status_reply_json(req, enrolled ? 200 : 409,
                              enrolled ? json_pack("{s:s, s:b}", "udid", udid, "sync", 1)
                                       : json_pack("{s:s}", "error", "not enrolled"));
            return;
        }
        if (slash && strncmp(slash, "/actions/", 9) == 0 && m == EVHTTP_REQ_POST) {
            sim_user_action a;
            esim_error err;
            if (sim_user_action_parse(slash + 9, &a, &err) != ESIM_OK) {
                status_reply_json(req, 400, json_pack("{s:s}", "error", err.msg));
                return;
            }
            sim_action_outcome o = {0};
            esim_err rc = sim_devsim_user_action(s, udid, a, &o, &err);
            esim_buf b = {0};
            sim_device_describe_json(d, &b, NULL);
            json_t *dj = json_loads((const char *)b.data, 0, NULL);
            esim_buf_free(&b);
            status_reply_json(req, rc == ESIM_OK || rc == ESIM_ESTATE ? 200 : 500,
                              json_pack("{s:s, s:b, s:b, s:b, s:s, s:o?}", "action",
                                        sim_user_action_name(a), "allowed", o.allowed, "erased",
                                        o.erased, "esim_kept", o.esim_kept, "reason", o.reason,
                                        "device", dj));
            return;
        }
    }
    status_reply_json(req, 404, json_pack("{s:s}", "error", "not found"));
}

static esim_err start_status(sim_devsim *s, const char *listen, esim_error *err)
{
    char host[128];
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host || colon == listen)
        return esim_fail(err, ESIM_EINVAL, "--status-listen wants HOST:PORT, got '%s'", listen);
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return esim_fail(err, ESIM_EINVAL, "--status-listen port must be 0..65535");
    s->status = evhttp_new(s->base);
    if (!s->status)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    evhttp_set_gencb(s->status, on_status, s);
    evhttp_set_allowed_methods(s->status, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    struct evhttp_bound_socket *bs =
        evhttp_bind_socket_with_handle(s->status, host, (uint16_t)port);
    if (!bs)
        return esim_fail(err, ESIM_EIO, "cannot listen on %s for the status endpoint", listen);
    s->status_port = sim_bound_port(evhttp_bound_socket_get_fd(bs));
    if (s->status_port == 0)
        return esim_fail(err, ESIM_EIO, "cannot read the status endpoint's port");
    return ESIM_OK;
}

/* ---- lifecycle
 * ------------------------------------------------------------------------------------ */

static esim_err make_or_load(sim_devsim *s, const sim_devsim_config *cfg, unsigned i, size_t k,
                             esim_error *err)
{
    char udid[65], eid[ESIM_EID_LEN + 1];
    sim_devsim_identity(cfg->seed, i, udid, eid);
    sim_device *d = NULL;
    esim_err rc = ESIM_ENOTFOUND;
    if (s->data_dir[0]) {
        char path[SIM_PATH_MAX + 128];
        snprintf(path, sizeof path, "%s/devices/%s.json", s->data_dir, udid);
        rc = sim_device_load(s->pki, path, &d, err);
        if (rc != ESIM_OK && rc != ESIM_ENOTFOUND)
            return rc;
    }
    uint64_t x = cfg->seed ^ (0xabcdefull * (i + 1));
    bool supervised = unit_draw(&x) < cfg->supervised_share;
    bool notnow = unit_draw(&x) < cfg->notnow_share;
    bool offline = unit_draw(&x) < cfg->offline_share;
    bool failing = unit_draw(&x) < cfg->fail_share;
    bool no_esim = unit_draw(&x) < cfg->no_esim_share;
    if (rc == ESIM_ENOTFOUND) {
        static const char *const mix[] = {"18.1", "17.4", "16.4"};
        sim_device_spec spec = {.udid = udid,
                                .eid = eid,
                                .supervised = supervised,
                                .os_version = cfg->os_version ? cfg->os_version : mix[i % 3]};
        rc = sim_device_new(s->pki, &spec, &d, err);
        if (rc != ESIM_OK)
            return rc;
    }
    slot *sl = &s->slots[k];
    sl->dev = d;
    sim_device_quirks q = {.locked = notnow, .fail_download = failing, .no_esim = no_esim};
    sim_device_set_quirks(d, &q);
    sim_device_set_reuse_identity_on_erase(d, cfg->reuse_identity_on_erase);
    if (notnow)
        sl->flags |= F_LOCK_ON_PUSH;
    if (offline)
        sl->flags |= F_OFFLINE_ON_PUSH;
    /* The token goes on the mock's channel before the device enrols (the
     * mock does not remember tokens across runs), as a phone's APNs
     * connection is up before its MDM enrolment: then nothing the service
     * pushes after the TokenUpdate can miss it, and the device needs no
     * check-in of its own after enrolling (on_registered). */
    mark_need_reg(s, k);
    if (sim_device_enrolled(d))
        s->stats.enrolled++;
    else
        at(s, 0, k, TIMED_ENROLL);
    return ESIM_OK;
}

esim_err sim_devsim_new(struct event_base *base, const sim_devsim_config *cfg, sim_devsim **out,
                        esim_error *err)
{
    if (!base || !cfg || !out || !cfg->pki_dir)
        return esim_fail(err, ESIM_EINVAL, "devsim needs an event base and a PKI directory");
    if (!cfg->server_url || (strncmp(cfg->server_url, "http://", 7) != 0 &&
                             strncmp(cfg->server_url, "https://", 8) != 0))
        return esim_fail(err, ESIM_EINVAL,
                         "--server must be an http:// or https:// URL of the MDM service");
    if (cfg->n_more_server_urls > 7 || (cfg->n_more_server_urls && !cfg->more_server_urls))
        return esim_fail(err, ESIM_EINVAL, "at most 8 --server URLs");
    for (size_t u = 0; u < cfg->n_more_server_urls; u++)
        if (!cfg->more_server_urls[u] ||
            (strncmp(cfg->more_server_urls[u], "http://", 7) != 0 &&
             strncmp(cfg->more_server_urls[u], "https://", 8) != 0) ||
            strlen(cfg->more_server_urls[u]) >= 1000 ||
            (strncmp(cfg->more_server_urls[u], "https://", 8) == 0) !=
                (strncmp(cfg->server_url, "https://", 8) == 0))
            return esim_fail(err, ESIM_EINVAL,
                             "every --server must be an http:// or https:// URL of the MDM "
                             "service, all with the same scheme");
    if (cfg->apns_url && strncmp(cfg->apns_url, "http://", 7) != 0 &&
        strncmp(cfg->apns_url, "https://", 8) != 0)
        return esim_fail(err, ESIM_EINVAL,
                         "--apns-mock must be the http:// URL of the mock's delivery listener");
    if ((cfg->devices == 0 && cfg->iot_devices == 0) || cfg->devices > 10000000)
        return esim_fail(err, ESIM_EINVAL, "--devices must be 1..10000000");
    if (cfg->iot_devices > 1000000)
        return esim_fail(err, ESIM_EINVAL, "--iot-devices must be 0..1000000");
    if ((cfg->eim_url && strncmp(cfg->eim_url, "http://", 7) != 0 &&
         strncmp(cfg->eim_url, "https://", 8) != 0) ||
        (cfg->api_url && strncmp(cfg->api_url, "http://", 7) != 0 &&
         strncmp(cfg->api_url, "https://", 8) != 0))
        return esim_fail(err, ESIM_EINVAL, "--eim-url and --api-url must be http(s):// URLs");
    if ((cfg->eim_url && strlen(cfg->eim_url) >= 500) ||
        (cfg->api_url && strlen(cfg->api_url) >= 500) ||
        (cfg->api_key && strlen(cfg->api_key) >= 500) ||
        (cfg->eim_id && strlen(cfg->eim_id) >= 128))
        return esim_fail(err, ESIM_EINVAL, "an IoT URL, key or eIM ID is too long");
    double shares[] = {cfg->supervised_share,  cfg->notnow_share,   cfg->offline_share,
                       cfg->fail_share,        cfg->no_esim_share,  cfg->windows_share,
                       cfg->iot_offline_share, cfg->iot_fail_share, cfg->iot_indirect_share};
    for (size_t k = 0; k < sizeof shares / sizeof shares[0]; k++)
        if (!(shares[k] >= 0.0 && shares[k] <= 1.0))
            return esim_fail(err, ESIM_EINVAL, "shares must be between 0 and 1");
    if (cfg->windows_pcs > cfg->devices)
        return esim_fail(err, ESIM_EINVAL, "--windows-pcs is more than --devices");
    if (cfg->first_device > cfg->devices || cfg->slice_devices > cfg->devices - cfg->first_device ||
        (cfg->first_device == cfg->devices && cfg->devices && !cfg->iot_devices))
        return esim_fail(err, ESIM_EINVAL,
                         "the slice (--first-device %u, --slice-devices %u) is not within the "
                         "%u --devices",
                         cfg->first_device, cfg->slice_devices, cfg->devices);
    unsigned first = cfg->first_device,
             end = cfg->slice_devices ? first + cfg->slice_devices : cfg->devices;
    if (cfg->wns_url && strncmp(cfg->wns_url, "http://", 7) != 0 &&
        strncmp(cfg->wns_url, "https://", 8) != 0)
        return esim_fail(err, ESIM_EINVAL,
                         "--wns-mock must be the http:// URL of the WNS mock's delivery listener");
    if (cfg->windows_server_url && strncmp(cfg->windows_server_url, "http://", 7) != 0 &&
        strncmp(cfg->windows_server_url, "https://", 8) != 0)
        return esim_fail(err, ESIM_EINVAL,
                         "--windows-server must be the https:// URL of the OMA-DM endpoint");
    if (cfg->n_smdp_resolve > 16)
        return esim_fail(err, ESIM_EINVAL, "at most 16 --smdp-resolve entries");
    for (size_t k = 0; k < cfg->n_smdp_resolve; k++) {
        const char *r = cfg->smdp_resolve[k], *eq = r ? strchr(r, '=') : NULL;
        const char *colon = eq ? strrchr(eq + 1, ':') : NULL;
        if (!eq || eq == r || (size_t)(eq - r) >= 256 || !colon || colon == eq + 1 || !colon[1] ||
            strspn(colon + 1, "0123456789") != strlen(colon + 1) || strlen(eq + 1) >= 290 ||
            strchr(eq + 1, '/'))
            return esim_fail(err, ESIM_EINVAL,
                             "--smdp-resolve wants NAME=HOST:PORT (NAME may be *), got '%s'",
                             r ? r : "");
    }
    if ((cfg->wns_url && strlen(cfg->wns_url) >= 500) ||
        (cfg->windows_server_url && strlen(cfg->windows_server_url) >= 2000))
        return esim_fail(err, ESIM_EINVAL, "a URL is too long");
    if ((cfg->channel && strlen(cfg->channel) >= 128) ||
        (cfg->data_dir && strlen(cfg->data_dir) >= SIM_PATH_MAX - 128) ||
        strlen(cfg->server_url) >= 1000 || (cfg->apns_url && strlen(cfg->apns_url) >= 500))
        return esim_fail(err, ESIM_EINVAL, "a URL, channel or path is too long");
    if (cfg->channel)
        for (const char *c = cfg->channel; *c; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                  (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
                return esim_fail(err, ESIM_EINVAL,
                                 "channel names use letters, digits, '-' and '_'");
    unsigned pcs = cfg->windows_pcs;
    if (!pcs && cfg->windows_share > 0)
        pcs = (unsigned)(cfg->devices * cfg->windows_share + 0.5);
    unsigned slice_pcs = 0; /* the PCs among this process's slice */
    for (unsigned i = first; pcs && i < end; i++)
        slice_pcs += sim_devsim_is_windows(cfg->devices, pcs, i);
    sim_devsim *s = calloc(1, sizeof *s);
    if (!s)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    s->base = base;
    s->on_enrol_refused = cfg->on_enrol_refused;
    s->enrol_refused_arg = cfg->enrol_refused_arg;
    s->n = end - first - slice_pcs; /* the iPhones; the PCs live in s->win */
    s->max_concurrent = cfg->max_concurrent ? cfg->max_concurrent : 64;
    s->window = s->max_concurrent < 32 ? (double)s->max_concurrent : 32.0;
    s->offline_ms = cfg->offline_ms ? cfg->offline_ms : 3000;
    s->notnow_ms = cfg->notnow_ms ? cfg->notnow_ms : 2000;
    s->tls_client_auth = cfg->tls_client_auth;
    s->no_identity = cfg->no_identity;
    snprintf(s->channel, sizeof s->channel, "%s", cfg->channel ? cfg->channel : "devsim");
    /* A URL without a path gets the conventional /mdm (check-in and commands share it). */
    for (size_t u = 0; u <= cfg->n_more_server_urls; u++) {
        const char *url = u ? cfg->more_server_urls[u - 1] : cfg->server_url;
        const char *after_scheme = strstr(url, "://") + 3;
        const char *path = strchr(after_scheme, '/');
        if (!path || strcmp(path, "/") == 0)
            snprintf(s->mdm_url[u], sizeof s->mdm_url[u], "%.*s/mdm",
                     (int)(path ? (size_t)(path - url) : strlen(url)), url);
        else
            snprintf(s->mdm_url[u], sizeof s->mdm_url[u], "%s", url);
    }
    s->n_mdm_urls = cfg->n_more_server_urls + 1;
    s->https_server = strncmp(cfg->server_url, "https://", 8) == 0;
    if (cfg->apns_url) {
        snprintf(s->apns_url, sizeof s->apns_url, "%s", cfg->apns_url);
        size_t al = strlen(s->apns_url);
        while (al > 0 && s->apns_url[al - 1] == '/')
            s->apns_url[--al] = '\0';
    }
    esim_err rc;
    if (cfg->data_dir) {
        snprintf(s->data_dir, sizeof s->data_dir, "%s", cfg->data_dir);
        char d[SIM_PATH_MAX + 16];
        snprintf(d, sizeof d, "%s/devices", s->data_dir);
        if ((rc = esim_mkdirs(d, 0700, err)) != ESIM_OK)
            goto fail;
    }
    if ((rc = sim_pki_open(cfg->pki_dir, &s->pki, err)) != ESIM_OK ||
        (rc = sim_http_new(base, &s->http, err)) != ESIM_OK)
        goto fail;
    s->token_cap = 64;
    while (s->token_cap < s->n * 2)
        s->token_cap *= 2;
    s->slots = calloc(s->n ? s->n : 1, sizeof *s->slots);
    s->queue = calloc(s->n ? s->n : 1, sizeof *s->queue);
    s->equeue = calloc(s->n ? s->n : 1, sizeof *s->equeue);
    s->token_idx = calloc(s->token_cap, sizeof *s->token_idx);
    s->tick = event_new(base, -1, EV_PERSIST, on_tick, s);
    s->kick = event_new(base, -1, 0, on_kick, s);
    if (!s->slots || !s->queue || !s->equeue || !s->token_idx || !s->tick || !s->kick) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory for %zu devices", s->n);
        goto fail;
    }
    if (slice_pcs) {
        /* The PCs' OMA-DM endpoint: --windows-server, else each instance's
         * URL (--server) with the path Windows uses when the URL has none. */
        const char *wurls[8];
        size_t n_wurls = cfg->windows_server_url ? 1 : cfg->n_more_server_urls + 1;
        for (size_t u = 0; u < n_wurls; u++) {
            const char *wurl = cfg->windows_server_url ? cfg->windows_server_url
                               : u                     ? cfg->more_server_urls[u - 1]
                                                       : cfg->server_url;
            const char *wpath = strchr(strstr(wurl, "://") + 3, '/');
            if (!wpath || strcmp(wpath, "/") == 0)
                snprintf(s->win_url[u], sizeof s->win_url[u],
                         "%.*s/ManagementServer/MDM.svc?mode=Maintenance&Platform=WoA",
                         (int)(wpath ? (size_t)(wpath - wurl) : strlen(wurl)), wurl);
            else
                snprintf(s->win_url[u], sizeof s->win_url[u], "%s", wurl);
            wurls[u] = s->win_url[u];
        }
        sim_winfleet_config wc = {.base = base,
                                  .http = s->http,
                                  .pki = s->pki,
                                  .urls = wurls,
                                  .n_urls = n_wurls,
                                  .wns_url = cfg->wns_url,
                                  .channel = s->channel,
                                  .data_dir = s->data_dir,
                                  .poll_ms = cfg->windows_poll_ms,
                                  .max_concurrent = s->max_concurrent,
                                  .seed = cfg->seed,
                                  .smdp_resolve = cfg->smdp_resolve,
                                  .n_smdp_resolve = cfg->n_smdp_resolve};
        if ((rc = sim_winfleet_new(&wc, slice_pcs, &s->win, err)) != ESIM_OK)
            goto fail;
    }
    for (unsigned i = first, k = 0; i < end; i++) {
        if (sim_devsim_is_windows(cfg->devices, pcs, i)) {
            if ((rc = sim_winfleet_add(s->win, i, err)) != ESIM_OK)
                goto fail;
            continue;
        }
        if ((rc = make_or_load(s, cfg, i, k, err)) != ESIM_OK)
            goto fail;
        token_put(s, k++);
        /* A factory-fresh phone is not written yet: its first real change
         * (enrolment) writes it, so starting 100,000 costs no disk at all. */
    }
    if (cfg->iot_devices) {
        sim_iotfleet_config ic = {.base = base,
                                  .http = s->http,
                                  .pki = s->pki,
                                  .pki_dir = cfg->pki_dir,
                                  .ca_file = sim_pki_ca_file(s->pki),
                                  .eim_url = cfg->eim_url ? cfg->eim_url : cfg->server_url,
                                  .eim_id = cfg->eim_id,
                                  .api_url = cfg->api_url,
                                  .api_key = cfg->api_key,
                                  .data_dir = s->data_dir,
                                  .poll_ms = cfg->iot_poll_ms,
                                  .offline_ms = s->offline_ms,
                                  .max_concurrent = s->max_concurrent,
                                  .offline_share = cfg->iot_offline_share,
                                  .fail_share = cfg->iot_fail_share,
                                  .indirect_share = cfg->iot_indirect_share,
                                  .seed = cfg->seed,
                                  .smdp_resolve = cfg->smdp_resolve,
                                  .n_smdp_resolve = cfg->n_smdp_resolve};
        if ((rc = sim_iotfleet_new(&ic, cfg->iot_devices, &s->iot, err)) != ESIM_OK)
            goto fail;
        for (unsigned i = 0; i < cfg->iot_devices; i++)
            if ((rc = sim_iotfleet_add(s->iot, i, err)) != ESIM_OK)
                goto fail;
        sim_iotfleet_start(s->iot);
    }
    if (cfg->status_listen && (rc = start_status(s, cfg->status_listen, err)) != ESIM_OK)
        goto fail;
    unsigned tick_ms = cfg->tick_ms ? cfg->tick_ms : TICK_MS;
    struct timeval tv = {(time_t)(tick_ms / 1000), (suseconds_t)(tick_ms % 1000) * 1000};
    event_add(s->tick, &tv);
    event_active(s->tick, EV_TIMEOUT, 1); /* the first one in the loop's first turn */
    *out = s;
    return ESIM_OK;
fail:
    sim_devsim_free(s);
    return rc;
}

void sim_devsim_free(sim_devsim *s)
{
    if (!s)
        return;
    if (s->status)
        evhttp_free(s->status);
    if (s->tick)
        event_free(s->tick);
    /* In-flight requests get their callbacks (cancelled) first, which free
     * their contexts; the devices are still alive for them. */
    sim_http_free(s->http);
    s->http = NULL;
    sim_winfleet_free(s->win);
    sim_iotfleet_free(s->iot);
    /* After the cancelled requests' callbacks, which may have kicked it. */
    if (s->kick)
        event_free(s->kick);
    s->kick = NULL;
    for (size_t i = 0; s->slots && i < s->n; i++) {
        sim_http_conn_free(s->slots[i].conn);
        sim_tls_session_free(s->slots[i].tls);
        sim_lpa_link_free(s->slots[i].es9);
        drop_unanswered(&s->slots[i]);
        if (s->slots[i].dev) {
            save_if_dirty(s, i);
            sim_device_free(s->slots[i].dev);
        }
    }
    free(s->slots);
    free(s->queue);
    free(s->equeue);
    free(s->token_idx);
    free(s->timers);
    sim_pki_free(s->pki);
    free(s);
}

uint16_t sim_devsim_status_port(const sim_devsim *s)
{
    return s->status_port;
}
size_t sim_devsim_device_count(const sim_devsim *s)
{
    return s->n;
}
sim_device *sim_devsim_device_at(sim_devsim *s, size_t i)
{
    return i < s->n ? s->slots[i].dev : NULL;
}
sim_devsim_stats sim_devsim_get_stats(const sim_devsim *s)
{
    sim_devsim_stats t = s->stats;
    t.devices = s->n + sim_winfleet_count(s->win);
    t.sessions_now = s->active;
    t.checkins_waiting = s->q_len;
    sim_winfleet_stats(s->win, &t);
    t.iot = sim_iotfleet_get_stats(s->iot);
    if (s->http) {
        sim_http_tls_stats tls = sim_http_get_tls_stats(s->http);
        t.tls_full = tls.full;
        t.tls_resumed = tls.resumed;
        t.tls_client_certs = tls.client_certs;
        t.tls_chains_verified = tls.chains_verified;
    }
    return t;
}

size_t sim_devsim_iot_count(const sim_devsim *s)
{
    return sim_iotfleet_count(s->iot);
}
sim_euicc *sim_devsim_iot_euicc_at(sim_devsim *s, size_t i)
{
    return s->iot ? sim_iotfleet_euicc_at(s->iot, i) : NULL;
}
long sim_devsim_iot_token_at(const sim_devsim *s, size_t i)
{
    return s->iot ? sim_iotfleet_token_at(s->iot, i) : 0;
}

size_t sim_devsim_windows_count(const sim_devsim *s)
{
    return sim_winfleet_count(s->win);
}
sim_winpc *sim_devsim_windows_at(sim_devsim *s, size_t i)
{
    return sim_winfleet_at(s->win, i);
}
sim_winpc *sim_devsim_find_windows(sim_devsim *s, const char *device_id)
{
    return s->win ? sim_winfleet_find(s->win, device_id) : NULL;
}
esim_err sim_devsim_windows_sync(sim_devsim *s, const char *device_id, esim_error *err)
{
    return sim_winfleet_sync(s->win, device_id, err);
}

sim_device *sim_devsim_find(sim_devsim *s, const char *udid)
{
    size_t i = slot_of(s, udid);
    return i != SIZE_MAX ? s->slots[i].dev : NULL;
}

static void after_action_notifications(void *arg, size_t still)
{
    (void)arg;
    (void)still;
}

esim_err sim_devsim_user_action(sim_devsim *s, const char *udid, sim_user_action a,
                                sim_action_outcome *out, esim_error *err)
{
    if (!s || !udid || !out)
        return esim_fail(err, ESIM_EINVAL,
                         "a user action needs a simulator, a UDID and an outcome");
    size_t i;
    for (i = 0; i < s->n; i++)
        if (strcmp(sim_device_udid(s->slots[i].dev), udid) == 0)
            break;
    if (i == s->n && sim_devsim_find_windows(s, udid))
        return sim_winfleet_user_action(s->win, udid, a, out, err);
    if (i == s->n)
        return esim_fail(err, ESIM_ENOTFOUND, "no simulated device %s", udid);
    slot *sl = &s->slots[i];
    /* An erase replaces the push token: take the old one out of the index first. */
    bool erases = a == SIM_ACTION_ERASE_ALL_CONTENT || a == SIM_ACTION_PASSCODE_WIPE ||
                  a == SIM_ACTION_FINDMY_ERASE;
    if (erases)
        token_forget(s, i);
    esim_err rc = sim_device_user_action(sl->dev, a, out, err);
    if (erases) {
        token_put(s, i);
        if (out->erased) {
            identity_renewed(sl);
            at(s, 200, i, TIMED_ENROLL);
        }
    }
    /* Deletions owe the SM-DP+ a notification. */
    if (sim_euicc_notification_count(sim_device_euicc(sl->dev)) > 0)
        sim_lpa_send_notifications(s->http, sim_device_euicc(sl->dev), &sl->es9,
                                   sim_pki_ca_file(s->pki), after_action_notifications, NULL, NULL);
    save_if_dirty(s, i);
    return rc;
}
