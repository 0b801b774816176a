/*
 * smdp.c — the SM-DP+ simulator: the operator's download server. SGP.22 ES9+
 * endpoints over HTTPS JSON (libevent evhttp + OpenSSL), mutual
 * authentication with the eUICC by ECDSA P-256 certificates from the test CI,
 * orders per EID served exactly once, and an admin endpoint for orders.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/internal.h"
#include "core/p256.h"
#include "core/p256_cache.h"
#include "core/tls.h"
#include "sgp32/sgp32.h"
#include "sim/sim_internal.h"

#define SMDP_MAX_BODY (256 * 1024)
/* Download sessions in progress at once, and how long one may stay open: a
 * download takes a few round trips, so a minute is generous; a client that
 * opens sessions and walks away cannot hold more than this many. */
#define SMDP_MAX_SESSIONS 1024
#define SMDP_SESSION_TTL_MS (60 * 1000)
/* Certificate slots (direct-mapped, ~200 bytes each): a download's eUICC
 * certificate comes with authenticateClient and again with its
 * notifications, while hundreds of other downloads put theirs in; with
 * 1024 slots a quarter of them had been pushed out by then. */
#define SMDP_CERT_CACHE 8192
#define SMDP_SAVE_DELAY_MS 100
/* An answer up to this long leaves in one TLS record (reply). */
#define SMDP_ONE_RECORD (16 * 1024)
/* eUICC keys kept ready to verify (euicc_signed below): 2 KiB each, sets of 4. */
#define SMDP_KEY_TABLES 1024

/* SESSION_DOWNLOADED: a DER session between its package and its install
 * notification, a ProfileInstallationResult verified with the session's
 * eUICC certificate (es9_handle_notification_der); it expires like any. */
enum session_state { SESSION_INITIATED = 1, SESSION_AUTHENTICATED, SESSION_DOWNLOADED };

/* An eUICC's public key: its certificate's point, verified against the
 * EUM (sim_cert_cache_verify_issued), for sim_cert_cache_verify_point,
 * and that certificate's SHA-256, which names the point in the key
 * tables (sim_smdp.keys). */
typedef struct {
    unsigned char q[65];
    unsigned char cert_sha[32];
} euicc_key;

typedef struct session {
    struct session *next, *prev; /* oldest first (sim_smdp's sessions) */
    struct session *hnext;       /* in its by_txid bucket */
    char txid[33];
    enum session_state state;
    bool der; /* SGP.22's base64 DER form (the ES9+ section below) */
    unsigned char euicc_challenge[16];
    unsigned char server_challenge[16];
    char server_address[128];
    char eid[ESIM_EID_LEN + 1];
    size_t order;         /* index into orders, once authenticated */
    euicc_key *euicc_key; /* its certificate's, verified, once authenticated */
    int64_t created_ms;
} session;

typedef struct {
    sim_order o;
    size_t next_same_eid; /* SIZE_MAX ends the chain */
} order_rec;

struct sim_smdp {
    struct event_base *base;
    const sim_pki *pki;
    SSL_CTX *ssl;
    size_t tls_full, tls_resumed; /* TLS handshakes completed */
    struct evhttp *http;
    uint16_t port;
    char url[64];
    char addr_ip[64], addr_localhost[64];
    char data_dir[SIM_PATH_MAX];
    char admin_token[256];
    char service_provider[64];
    order_rec *orders;
    size_t n_orders, cap_orders;
    size_t *by_iccid, *by_eid, *by_mid; /* open addressing: order index + 1, 0 = empty */
    size_t idx_cap;
    session *sessions, *sessions_tail; /* oldest first: they expire in this order */
    session **by_txid;                 /* txid_buckets chains */
    size_t txid_buckets;
    size_t n_sessions, max_sessions;
    int64_t session_ttl_ms;
    sim_cert_cache *certs;      /* EUM and eUICC certificates that verified against the CI */
    esim_p256_cache *keys;      /* eUICC keys' tables, by certificate digest (euicc_signed) */
    char *dpauth_b64;           /* our certificate as sent in every authentication */
    sim_ec_signer *dpauth_sign; /* our key, ready to sign */
    struct event *save_timer;
    bool save_pending;
    int journal_fd; /* DIR/orders.journal, O_APPEND; -1 without a data dir */
};

const char *sim_order_state_name(sim_order_state s)
{
    switch (s) {
    case SIM_ORDER_AVAILABLE:
        return "Available";
    case SIM_ORDER_RELEASED:
        return "Released";
    case SIM_ORDER_DOWNLOADED:
        return "Downloaded";
    case SIM_ORDER_INSTALLED:
        return "Installed";
    case SIM_ORDER_ERROR:
        return "Error";
    }
    return "Unknown";
}

static bool order_state_parse(const char *s, sim_order_state *out)
{
    for (int i = SIM_ORDER_AVAILABLE; i <= SIM_ORDER_ERROR; i++)
        if (s && strcmp(s, sim_order_state_name((sim_order_state)i)) == 0) {
            *out = (sim_order_state)i;
            return true;
        }
    return false;
}

/* ---- order indexes ---------------------------------------------------------- */

typedef enum { KEY_ICCID, KEY_EID, KEY_MID } order_key;

static const char *key_of(const sim_order *o, order_key k)
{
    return k == KEY_ICCID ? o->iccid : k == KEY_EID ? o->eid : o->matching_id;
}

static size_t idx_lookup(const sim_smdp *s, const size_t *tab, const char *key, order_key k)
{
    if (!s->idx_cap || !key)
        return SIZE_MAX;
    for (size_t i = esim_hash_str(key) & (s->idx_cap - 1);; i = (i + 1) & (s->idx_cap - 1)) {
        if (tab[i] == 0)
            return SIZE_MAX;
        const sim_order *o = &s->orders[tab[i] - 1].o;
        if (strcmp(key_of(o, k), key) == 0)
            return tab[i] - 1;
    }
}

static void idx_put(sim_smdp *s, size_t *tab, const char *key, size_t order)
{
    size_t i = esim_hash_str(key) & (s->idx_cap - 1);
    while (tab[i] != 0)
        i = (i + 1) & (s->idx_cap - 1);
    tab[i] = order + 1;
}

/* Rebuilds both indexes at twice the order capacity (load factor <= 1/2). */
static esim_err idx_rebuild(sim_smdp *s, size_t want)
{
    size_t cap = 64;
    while (cap < want * 2)
        cap *= 2;
    size_t *a = calloc(cap, sizeof *a), *b = calloc(cap, sizeof *b), *c = calloc(cap, sizeof *c);
    if (!a || !b || !c) {
        free(a);
        free(b);
        free(c);
        return ESIM_ENOMEM;
    }
    free(s->by_iccid);
    free(s->by_eid);
    free(s->by_mid);
    s->by_iccid = a;
    s->by_eid = b;
    s->by_mid = c;
    s->idx_cap = cap;
    for (size_t i = 0; i < s->n_orders; i++) {
        s->orders[i].next_same_eid = SIZE_MAX;
        idx_put(s, s->by_iccid, s->orders[i].o.iccid, i);
        if (s->orders[i].o.matching_id[0])
            idx_put(s, s->by_mid, s->orders[i].o.matching_id, i);
        size_t head = idx_lookup(s, s->by_eid, s->orders[i].o.eid, KEY_EID);
        if (head == SIZE_MAX) {
            idx_put(s, s->by_eid, s->orders[i].o.eid, i);
        } else {
            while (s->orders[head].next_same_eid != SIZE_MAX)
                head = s->orders[head].next_same_eid;
            s->orders[head].next_same_eid = i;
        }
    }
    return ESIM_OK;
}

/* ---- persistence ------------------------------------------------------------ */

static json_t *order_json(const sim_order *o)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:s}", "eid", o->eid, "iccid", o->iccid,
                     "matching_id", o->matching_id, "state", sim_order_state_name(o->state),
                     "downloads", (int)o->downloads, "retries", (int)o->retries, "installs",
                     (int)o->installs, "error", o->error);
}

/*
 * Crash safety. orders.json is written a moment after changes (batched), so
 * a change that an answer depends on — a download handed out, an install
 * notified — is first appended to DIR/orders.journal as the order's whole
 * JSON on one line, before the answer goes: killed at any instant, the
 * SM-DP+ restarts knowing every profile it handed out, and never hands one
 * out twice. Loading replays the journal over orders.json; each save of
 * orders.json empties it. (One write() per change: it survives the process
 * being killed, not a power cut.)
 */
static void journal_append(sim_smdp *s, const sim_order *o)
{
    if (s->journal_fd < 0)
        return;
    json_t *j = order_json(o);
    char *line = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (line) {
        size_t len = strlen(line);
        line[len] = '\n'; /* in place of the terminator: written with the line */
        ssize_t w = write(s->journal_fd, line, len + 1);
        (void)w; /* a failed append leaves the batched save */
        free(line);
    }
}

static esim_err save_now(sim_smdp *s, esim_error *err)
{
    s->save_pending = false;
    if (!s->data_dir[0])
        return ESIM_OK;
    json_t *arr = json_array();
    json_t *root = json_pack("{s:o}", "orders", arr);
    if (!root)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t i = 0; i < s->n_orders; i++)
        json_array_append_new(arr, order_json(&s->orders[i].o));
    char path[SIM_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/orders.json", s->data_dir);
    esim_err rc = sim_json_save(root, path, 0644, err);
    json_decref(root);
    if (rc == ESIM_OK && s->journal_fd >= 0 && ftruncate(s->journal_fd, 0) != 0)
        rc = esim_fail(err, ESIM_EIO, "cannot empty %s/orders.journal", s->data_dir);
    return rc;
}

static void save_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    /* A failed save is retried at the next change; the server keeps serving. */
    save_now(arg, NULL);
}

/* Order state changes are written shortly after they happen (batched so a
 * burst of downloads costs one write), and on shutdown. */
static void schedule_save(sim_smdp *s)
{
    if (!s->data_dir[0] || s->save_pending)
        return;
    s->save_pending = true;
    struct timeval tv = {0, SMDP_SAVE_DELAY_MS * 1000};
    evtimer_add(s->save_timer, &tv);
}

/* ---- orders ------------------------------------------------------------------ */

static esim_err validate_order(const char *eid, const char *iccid, const char *matching_id,
                               esim_error *err)
{
    esim_err rc = esim_eid_validate(eid, err);
    if (rc == ESIM_OK)
        rc = esim_iccid_validate(iccid, err);
    if (rc != ESIM_OK)
        return rc;
    if (matching_id) {
        size_t n = strlen(matching_id);
        if (n > 64)
            return esim_fail(err, ESIM_EINVAL, "matching ID is longer than 64 characters");
        for (size_t i = 0; i < n; i++) {
            char c = matching_id[i];
            if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                  c == '-'))
                return esim_fail(err, ESIM_EINVAL,
                                 "matching ID may hold only letters, digits and '-'");
        }
    }
    return ESIM_OK;
}

static esim_err add_order_rec(sim_smdp *s, const sim_order *o, esim_error *err)
{
    if (idx_lookup(s, s->by_iccid, o->iccid, KEY_ICCID) != SIZE_MAX)
        return esim_fail(err, ESIM_EEXIST, "ICCID %s is already ordered", o->iccid);
    if (o->matching_id[0] && idx_lookup(s, s->by_mid, o->matching_id, KEY_MID) != SIZE_MAX)
        return esim_fail(err, ESIM_EEXIST, "matching ID %s is already used", o->matching_id);
    if (s->n_orders == s->cap_orders) {
        order_rec *n = esim_grow(s->orders, &s->cap_orders, s->n_orders + 1, sizeof *n);
        if (!n)
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        s->orders = n;
    }
    size_t i = s->n_orders++;
    s->orders[i].o = *o;
    s->orders[i].next_same_eid = SIZE_MAX;
    if (s->n_orders * 2 > s->idx_cap) {
        if (idx_rebuild(s, s->cap_orders) != ESIM_OK) {
            s->n_orders--;
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        return ESIM_OK;
    }
    idx_put(s, s->by_iccid, o->iccid, i);
    if (o->matching_id[0])
        idx_put(s, s->by_mid, o->matching_id, i);
    size_t head = idx_lookup(s, s->by_eid, o->eid, KEY_EID);
    if (head == SIZE_MAX) {
        idx_put(s, s->by_eid, o->eid, i);
    } else {
        while (s->orders[head].next_same_eid != SIZE_MAX)
            head = s->orders[head].next_same_eid;
        s->orders[head].next_same_eid = i;
    }
    return ESIM_OK;
}

esim_err sim_smdp_add_order(sim_smdp *s, const char *eid, const char *iccid,
                            const char *matching_id, bool released, esim_error *err)
{
    esim_err rc = validate_order(eid, iccid, matching_id, err);
    if (rc != ESIM_OK)
        return rc;
    sim_order o = {0};
    snprintf(o.eid, sizeof o.eid, "%s", eid);
    snprintf(o.iccid, sizeof o.iccid, "%s", iccid);
    snprintf(o.matching_id, sizeof o.matching_id, "%s", matching_id ? matching_id : "");
    o.state = released ? SIM_ORDER_RELEASED : SIM_ORDER_AVAILABLE;
    rc = add_order_rec(s, &o, err);
    if (rc == ESIM_OK) {
        journal_append(s, &o);
        schedule_save(s);
    }
    return rc;
}

esim_err sim_smdp_release_order(sim_smdp *s, const char *iccid, esim_error *err)
{
    size_t i = idx_lookup(s, s->by_iccid, iccid, KEY_ICCID);
    if (i == SIZE_MAX)
        return esim_fail(err, ESIM_ENOTFOUND, "no order for ICCID %s", iccid ? iccid : "(null)");
    if (s->orders[i].o.state != SIM_ORDER_AVAILABLE)
        return esim_fail(err, ESIM_ESTATE, "order %s is %s, only an Available order is released",
                         iccid, sim_order_state_name(s->orders[i].o.state));
    s->orders[i].o.state = SIM_ORDER_RELEASED;
    journal_append(s, &s->orders[i].o);
    schedule_save(s);
    return ESIM_OK;
}

size_t sim_smdp_order_count(const sim_smdp *s)
{
    return s->n_orders;
}

const sim_order *sim_smdp_order_at(const sim_smdp *s, size_t i)
{
    return i < s->n_orders ? &s->orders[i].o : NULL;
}

const sim_order *sim_smdp_find_order(const sim_smdp *s, const char *iccid)
{
    size_t i = idx_lookup(s, s->by_iccid, iccid, KEY_ICCID);
    return i == SIZE_MAX ? NULL : &s->orders[i].o;
}

static char *trim(char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' || p[n - 1] == '\n'))
        p[--n] = '\0';
    return p;
}

esim_err sim_smdp_load_csv(sim_smdp *s, const char *path, size_t *added, esim_error *err)
{
    if (!s || !path)
        return esim_fail(err, ESIM_EINVAL, "loading orders needs an SM-DP+ and a file");
    esim_buf b = {0};
    esim_err rc = esim_read_file(path, 64u << 20, &b, err);
    if (rc != ESIM_OK)
        return rc;
    /* Validate every line first: a manifest is taken whole or not at all. */
    size_t n_before = s->n_orders, count = 0;
    char *save = NULL;
    unsigned line = 0;
    for (char *l = strtok_r((char *)b.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        line++;
        char *t = trim(l);
        if (!*t || *t == '#' || (line == 1 && strncmp(t, "eid", 3) == 0))
            continue;
        char *f[4] = {0};
        int nf = 0;
        for (char *c = t; nf < 4;) {
            f[nf++] = c;
            c = strchr(c, ',');
            if (!c)
                break;
            *c++ = '\0';
        }
        if (nf < 2 || nf > 3) {
            rc = esim_fail(err, ESIM_EINVAL, "%s line %u: expected eid,iccid[,matching_id]", path,
                           line);
            break;
        }
        const char *mid = nf == 3 ? trim(f[2]) : NULL;
        esim_error e2;
        rc = validate_order(trim(f[0]), trim(f[1]), mid && *mid ? mid : NULL, &e2);
        if (rc == ESIM_OK) {
            sim_order o = {0};
            snprintf(o.eid, sizeof o.eid, "%s", trim(f[0]));
            snprintf(o.iccid, sizeof o.iccid, "%s", trim(f[1]));
            snprintf(o.matching_id, sizeof o.matching_id, "%s", mid ? mid : "");
            o.state = SIM_ORDER_RELEASED; /* a manifest handed over is ready to serve */
            rc = add_order_rec(s, &o, &e2);
        }
        if (rc != ESIM_OK) {
            esim_fail(err, rc, "%s line %u: %s", path, line, e2.msg);
            break;
        }
        count++;
    }
    esim_buf_free(&b);
    if (rc != ESIM_OK) {
        s->n_orders = n_before;
        idx_rebuild(s, s->cap_orders);
        return rc;
    }
    if (added)
        *added = count;
    schedule_save(s);
    return ESIM_OK;
}

/* One saved order (orders.json or a journal line): added, or replacing the
 * state of the order with its ICCID. */
static esim_err load_order(sim_smdp *s, const json_t *it, const char *path, size_t n,
                           esim_error *err)
{
    sim_order o = {0};
    const char *mid = sim_json_str(it, "matching_id");
    esim_err rc = validate_order(sim_json_str(it, "eid"), sim_json_str(it, "iccid"),
                                 mid && *mid ? mid : NULL, err);
    if (rc == ESIM_OK && !order_state_parse(sim_json_str(it, "state"), &o.state))
        rc = esim_fail(err, ESIM_EINVAL, "%s: order %zu has an unknown state", path, n);
    if (rc != ESIM_OK)
        return rc;
    snprintf(o.eid, sizeof o.eid, "%s", sim_json_str(it, "eid"));
    snprintf(o.iccid, sizeof o.iccid, "%s", sim_json_str(it, "iccid"));
    snprintf(o.matching_id, sizeof o.matching_id, "%s", mid ? mid : "");
    snprintf(o.error, sizeof o.error, "%s",
             sim_json_str(it, "error") ? sim_json_str(it, "error") : "");
    o.downloads = (unsigned)json_integer_value(json_object_get(it, "downloads"));
    o.installs = (unsigned)json_integer_value(json_object_get(it, "installs"));
    o.retries = (unsigned)json_integer_value(json_object_get(it, "retries"));
    size_t i = idx_lookup(s, s->by_iccid, o.iccid, KEY_ICCID);
    if (i == SIZE_MAX)
        return add_order_rec(s, &o, err);
    sim_order *have = &s->orders[i].o;
    if (strcmp(have->eid, o.eid) != 0)
        return esim_fail(err, ESIM_EINVAL, "%s: order %zu moves ICCID %s to another EID", path, n,
                         o.iccid);
    have->state = o.state;
    have->downloads = o.downloads;
    have->retries = o.retries;
    have->installs = o.installs;
    memcpy(have->error, o.error, sizeof have->error);
    return ESIM_OK;
}

static esim_err load_saved_orders(sim_smdp *s, esim_error *err)
{
    char path[SIM_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/orders.json", s->data_dir);
    json_t *root = NULL;
    esim_err rc = sim_json_load(path, 256u << 20, &root, err);
    if (rc == ESIM_ENOTFOUND)
        rc = ESIM_OK;
    else if (rc != ESIM_OK)
        return rc;
    json_t *arr = json_object_get(root, "orders"), *it;
    size_t i;
    json_array_foreach(arr, i, it)
    {
        if ((rc = load_order(s, it, path, i, err)) != ESIM_OK)
            break;
    }
    json_decref(root);
    if (rc != ESIM_OK)
        return rc;
    /* Then the changes made since that save. A last line cut short by the
     * kill is ignored: its answer never went out. */
    snprintf(path, sizeof path, "%s/orders.journal", s->data_dir);
    esim_buf b = {0};
    rc = esim_read_file(path, 256u << 20, &b, err);
    if (rc == ESIM_ENOTFOUND) {
        if (err)
            err->msg[0] = '\0';
        return ESIM_OK;
    }
    size_t line = 0, replayed = 0;
    for (size_t pos = 0; rc == ESIM_OK && pos < b.len; line++) {
        const char *start = (const char *)b.data + pos;
        const char *nl = memchr(start, '\n', b.len - pos);
        if (!nl)
            break;
        json_t *j = json_loadb(start, (size_t)(nl - start), 0, NULL);
        if (j)
            rc = load_order(s, j, path, line, err);
        replayed += j != NULL;
        json_decref(j);
        pos = (size_t)(nl - (const char *)b.data) + 1;
    }
    esim_buf_free(&b);
    if (rc == ESIM_OK && replayed)
        rc = save_now(s, err); /* folds the journal into orders.json */
    return rc;
}

/* ---- sessions ------------------------------------------------------------------ */

static void session_free(session *ss)
{
    if (ss) {
        free(ss->euicc_key);
        free(ss);
    }
}

/* Sessions are found by transaction ID in a hash table (every ES9+ call
 * names one; with hundreds of downloads in progress a walk of the list
 * compared hundreds of IDs a call) and kept in a list, oldest first, so
 * that expiry looks at the expired ones only. */
static session **txid_bucket(sim_smdp *s, const char *txid)
{
    return &s->by_txid[esim_hash_str(txid) & (s->txid_buckets - 1)];
}

static session *session_find(sim_smdp *s, const char *txid)
{
    if (!txid)
        return NULL;
    for (session *ss = *txid_bucket(s, txid); ss; ss = ss->hnext)
        if (strcmp(ss->txid, txid) == 0)
            return ss;
    return NULL;
}

static void session_add(sim_smdp *s, session *ss)
{
    ss->prev = s->sessions_tail;
    ss->next = NULL;
    if (s->sessions_tail)
        s->sessions_tail->next = ss;
    else
        s->sessions = ss;
    s->sessions_tail = ss;
    session **b = txid_bucket(s, ss->txid);
    ss->hnext = *b;
    *b = ss;
    s->n_sessions++;
}

static void session_remove(sim_smdp *s, session *target)
{
    for (session **pp = txid_bucket(s, target->txid); *pp; pp = &(*pp)->hnext)
        if (*pp == target) {
            *pp = target->hnext;
            break;
        }
    if (target->prev)
        target->prev->next = target->next;
    else
        s->sessions = target->next;
    if (target->next)
        target->next->prev = target->prev;
    else
        s->sessions_tail = target->prev;
    s->n_sessions--;
    session_free(target);
}

static void sessions_expire(sim_smdp *s)
{
    int64_t now = esim_mono_ms();
    while (s->sessions && now - s->sessions->created_ms > s->session_ttl_ms)
        session_remove(s, s->sessions);
}

/* ---- HTTP plumbing -------------------------------------------------------------- */

static void reply(struct evhttp_request *req, int code, json_t *body)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "X-Admin-Protocol", "gsma/rsp/v2.2.0");
    struct evbuffer *out = evbuffer_new();
    if (body && out) {
        evhttp_add_header(h, "Content-Type", "application/json");
        esim_buf txt = {0};
        if (sim_json_dump(body, &txt) == ESIM_OK)
            evbuffer_add(out, txt.data, txt.len);
        esim_buf_free(&txt);
    }
    json_decref(body);
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evhttp_send_reply(req, code, code == 204 ? "No Content" : code < 300 ? "OK" : "Error", out);
    if (out)
        evbuffer_free(out);
    /* The head and the body were two pieces of the connection's output, and
     * libevent's TLS writes each piece as a TLS record of its own (a write
     * to the socket, and a read at the other end, each): made one piece,
     * the answer goes in one record. Written later, from the loop. */
    struct evbuffer *o = bev ? bufferevent_get_output(bev) : NULL;
    if (o && evbuffer_get_length(o) <= SMDP_ONE_RECORD)
        evbuffer_pullup(o, -1);
}

static json_t *header_ok(void)
{
    return json_pack("{s:{s:s}}", "functionExecutionStatus", "status", "Executed-Success");
}

/* SGP.22 functional errors travel as HTTP 200 with status Failed and the
 * subject/reason codes. */
static void reply_failed(struct evhttp_request *req, const char *subject, const char *reason,
                         const char *message)
{
    json_t *b = json_pack("{s:{s:{s:s, s:{s:s, s:s, s:s}}}}", "header", "functionExecutionStatus",
                          "status", "Failed", "statusCodeData", "subjectCode", subject,
                          "reasonCode", reason, "message", message);
    reply(req, 200, b);
}

static json_t *read_json_body(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    if (n == 0 || n > SMDP_MAX_BODY)
        return NULL;
    unsigned char *p = evbuffer_pullup(in, (ssize_t)n);
    json_t *j = sim_json_loadb((const char *)p, n);
    if (!json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* Decodes the base64 JSON object at |key| (a signed blob) into |raw| and *obj. */
static bool signed_blob(const json_t *o, const char *key, esim_buf *raw, json_t **obj)
{
    if (sim_json_b64(o, key, raw, NULL) != ESIM_OK)
        return false;
    *obj = sim_json_loadb((const char *)raw->data, raw->len);
    if (!json_is_object(*obj)) {
        json_decref(*obj);
        *obj = NULL;
        return false;
    }
    return true;
}

/* Our signature (DPauth's key) of |data| as raw r||s. */
static esim_err dp_sign(sim_smdp *s, const void *data, size_t len, unsigned char sig[64],
                        esim_error *err)
{
    unsigned char dgst[32];
    sim_sha256(data, len, dgst);
    if (!sim_ec_signer_sign(s->dpauth_sign, dgst, sig))
        return esim_fail(err, ESIM_ECRYPTO, "ECDSA signing failed");
    return ESIM_OK;
}

static esim_err sign_blob(sim_smdp *s, json_t *resp, const char *blob_key, const char *sig_key,
                          json_t *blob)
{
    esim_buf raw = {0};
    unsigned char sig[64];
    esim_err rc = sim_json_dump(blob, &raw);
    if (rc == ESIM_OK)
        rc = dp_sign(s, raw.data, raw.len, sig, NULL);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(resp, blob_key, raw.data, raw.len);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(resp, sig_key, sig, sizeof sig);
    esim_buf_free(&raw);
    json_decref(blob);
    return rc;
}

static bool b64_equals(const char *b64, const unsigned char *bytes, size_t n)
{
    esim_buf b = {0};
    bool eq = b64 && esim_base64_decode(b64, strlen(b64), &b, NULL) == ESIM_OK && b.len == n &&
              memcmp(b.data, bytes, n) == 0;
    esim_buf_free(&b);
    return eq;
}

/* ---- ES9+ ----------------------------------------------------------------------- */

static void *get_der(const json_t *body, const char *key, const asn_TYPE_descriptor_t *td);
static esim_err initiate_der_answer(sim_smdp *s, session *ss, json_t *resp);

/* A transaction ID's 16 bytes as the session's name: 32 uppercase hex
 * digits (txid_bytes reads them back). */
static void txid_hex(const uint8_t b[16], char out[33])
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < 16; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[32] = '\0';
}

static void es9_initiate(sim_smdp *s, struct evhttp_request *req, json_t *body)
{
    esim_buf chal = {0};
    const char *addr = sim_json_str(body, "smdpAddress");
    if (sim_json_b64(body, "euiccChallenge", &chal, NULL) != ESIM_OK || chal.len != 16) {
        esim_buf_free(&chal);
        reply_failed(req, "8.1", "2.1", "euiccChallenge must be 16 bytes of base64");
        return;
    }
    if (!addr || (strcmp(addr, s->addr_ip) != 0 && strcmp(addr, s->addr_localhost) != 0)) {
        esim_buf_free(&chal);
        reply_failed(req, "8.8.1", "3.8", "this is not the SM-DP+ address the eUICC asked for");
        return;
    }
    /* euiccInfo1 as base64 DER of EUICCInfo1: the eUICC speaks SGP.22's DER
     * form (anything else there is the JSON form's, which ignores it). */
    void *info1 = get_der(body, "euiccInfo1", &asn_DEF_EUICCInfo1);
    bool der = info1 != NULL;
    sgp32_free(&asn_DEF_EUICCInfo1, info1);
    sessions_expire(s);
    if (s->n_sessions >= s->max_sessions) {
        esim_buf_free(&chal);
        reply_failed(req, "8.8", "6.4", "too many sessions in progress; retry later");
        return;
    }
    session *ss = calloc(1, sizeof *ss);
    unsigned char tx[16];
    if (!ss || esim_random_bytes(tx, sizeof tx) != ESIM_OK ||
        esim_random_bytes(ss->server_challenge, 16) != ESIM_OK) {
        free(ss);
        esim_buf_free(&chal);
        reply(req, 500, NULL);
        return;
    }
    txid_hex(tx, ss->txid);
    memcpy(ss->euicc_challenge, chal.data, 16);
    snprintf(ss->server_address, sizeof ss->server_address, "%s", addr);
    ss->state = SESSION_INITIATED;
    ss->der = der;
    ss->created_ms = esim_mono_ms();
    session_add(s, ss);

    esim_buf sc = {0};
    esim_base64_encode(ss->server_challenge, 16, &sc);
    /* serverSigned1 binds the transaction, the eUICC's own challenge (so an
     * old answer cannot be replayed to it) and our fresh challenge. */
    json_t *signed1 = json_pack("{s:s, s:s, s:s, s:s}", "transactionId", ss->txid, "euiccChallenge",
                                sim_json_str(body, "euiccChallenge"), "serverAddress", addr,
                                "serverChallenge", (const char *)sc.data);
    json_t *resp = json_pack("{s:o, s:s, s:s}", "header", header_ok(), "transactionId", ss->txid,
                             "serverCertificate", s->dpauth_b64);
    esim_err rc = ESIM_ENOMEM;
    if (resp && der) {
        rc = initiate_der_answer(s, ss, resp);
    } else if (resp && signed1) {
        rc = sign_blob(s, resp, "serverSigned1", "serverSignature1", signed1);
        signed1 = NULL;
    }
    json_decref(signed1);
    esim_buf_free(&sc);
    esim_buf_free(&chal);
    if (rc != ESIM_OK || !resp) {
        json_decref(resp);
        reply(req, 500, NULL);
        return;
    }
    reply(req, 200, resp);
}

/* Verifies the eUICC and EUM certificates in |o| against our CI and returns
 * the eUICC certificate's public key and its EID (from the certificate,
 * never the body). */
static bool verify_euicc(sim_smdp *s, struct evhttp_request *req, const json_t *o,
                         euicc_key **euicc_out, char eid[ESIM_EID_LEN + 1])
{
    /* Both verified once and then remembered (by their DER): every eUICC
     * of an EUM sends the same EUM, and each eUICC its own certificate with
     * authenticateClient and again with each notification. The EUM is
     * verified to the CI by OpenSSL (X509_verify_cert); an eUICC certificate
     * is then the chain's last link, checked against that EUM with one
     * signature verification (sim_cert_cache_verify_issued). */
    esim_err why;
    X509 *eum = sim_cert_cache_verify(s->certs, sim_json_str(o, "eumCertificate"), s->pki->ci.x509,
                                      NULL, &why, NULL);
    char serial[64] = "";
    euicc_key *euicc = eum ? malloc(sizeof *euicc) : NULL;
    bool issued = euicc && sim_cert_cache_verify_issued(
                               s->certs, sim_json_str(o, "euiccCertificate"), eum, serial,
                               sizeof serial, euicc->q, euicc->cert_sha, &why, NULL);
    bool ok = false;
    if (!eum)
        reply_failed(req, "8.1.2", "6.1", "EUM certificate does not verify against the CI");
    else if (!euicc)
        reply(req, 500, NULL);
    else if (!issued)
        reply_failed(req, "8.1.3", "6.1", "eUICC certificate does not verify against the EUM");
    else if (esim_eid_validate(serial, NULL) != ESIM_OK)
        reply_failed(req, "8.1.3", "6.1", "eUICC certificate does not carry a valid EID");
    else
        ok = true;
    X509_free(eum);
    if (!ok) {
        free(euicc);
        return false;
    }
    memcpy(eid, serial, ESIM_EID_LEN + 1);
    *euicc_out = euicc;
    return true;
}

/*
 * The eUICC's signatures. A download's eUICC signs four times with one key
 * (euiccSigned1, euiccSigned2, then the install and the enable
 * notifications) and each signature is verified. OpenSSL multiplies the
 * key's point afresh each time (~790,000 instructions); core/p256.h's
 * table for the key costs about as much once and ~263,000 a verification
 * after (callgrind). The tables are kept in core/p256_cache.h's sets of
 * four, the least recently used made again for a new key, by the digest
 * of the certificate that carries the key (sim_cert_cache_verify_issued
 * has it already; one eUICC, one certificate): a table is a property of
 * the public key, not a verdict, and every signature is verified.
 */
/* |sig| (r‖s, |sig_len| bytes) is the signature of |data| by the eUICC key
 * |pub|. Without a table (out of memory, or a point the table refuses)
 * OpenSSL decides. */
static bool euicc_signed(sim_smdp *s, const euicc_key *pub, const void *data, size_t len,
                         const unsigned char *sig, size_t sig_len)
{
    if (!pub || sig_len != 64)
        return false;
    const esim_p256_key *k = esim_p256_cache_get(s->keys, pub->cert_sha, pub->q, NULL);
    if (!k)
        return sim_cert_cache_verify_point(s->certs, pub->q, data, len, sig, sig_len, NULL) ==
               ESIM_OK;
    unsigned char dgst[32];
    sim_sha256(data, len, dgst);
    return esim_p256_verify(k, dgst, sizeof dgst, sig) == 1;
}

static bool verify_sig(sim_smdp *s, const euicc_key *pub, const esim_buf *data, const json_t *o,
                       const char *sig_key)
{
    esim_buf sig = {0};
    bool ok = pub && sim_json_b64(o, sig_key, &sig, NULL) == ESIM_OK &&
              euicc_signed(s, pub, data->data, data->len, sig.data, sig.len);
    esim_buf_free(&sig);
    return ok;
}

/* Picks the order for an authenticated EID, or answers why there is none. */
static size_t choose_order(sim_smdp *s, struct evhttp_request *req, const char *eid,
                           const char *matching_id)
{
    if (matching_id && *matching_id) {
        size_t i = idx_lookup(s, s->by_mid, matching_id, KEY_MID);
        if (i == SIZE_MAX) {
            reply_failed(req, "8.2.6", "3.8", "matching ID refused: no such order");
            return SIZE_MAX;
        }
        const sim_order *o = &s->orders[i].o;
        if (strcmp(o->eid, eid) != 0) {
            reply_failed(req, "8.1.1", "3.8", "this order is for another EID");
            return SIZE_MAX;
        }
        if (o->state == SIM_ORDER_AVAILABLE) {
            reply_failed(req, "8.2", "1.2", "profile not released by the operator");
            return SIZE_MAX;
        }
        if (o->state != SIM_ORDER_RELEASED && o->state != SIM_ORDER_DOWNLOADED) {
            reply_failed(req, "8.2", "3.7",
                         "profile already downloaded: not available for a new binding");
            return SIZE_MAX;
        }
        return i;
    }
    /* Default SM-DP+ discovery (the MDM case): the order linked to this EID. */
    bool consumed = false, available = false;
    size_t retry = SIZE_MAX;
    for (size_t i = idx_lookup(s, s->by_eid, eid, KEY_EID); i != SIZE_MAX;
         i = s->orders[i].next_same_eid) {
        if (s->orders[i].o.state == SIM_ORDER_RELEASED)
            return i;
        if (s->orders[i].o.state == SIM_ORDER_DOWNLOADED && retry == SIZE_MAX)
            retry = i;
        if (s->orders[i].o.state == SIM_ORDER_AVAILABLE)
            available = true;
        else
            consumed = true;
    }
    if (retry != SIZE_MAX)
        return retry; /* a download retry, below */
    if (available)
        reply_failed(req, "8.2", "1.2", "profile not released by the operator");
    else if (consumed)
        reply_failed(req, "8.2", "3.7",
                     "profile already downloaded: not available for a new binding");
    else
        reply_failed(req, "8.1.1", "2.2", "no profile ordered for this EID");
    return SIZE_MAX;
}

/* An install notification from |eid| (verified) for |iccid|; |result| NULL
 * or "ok": installed. Only the eUICC the profile was bound to can report
 * its installation; a repeated notification is confirmed again but counted
 * once. */
static void note_install(sim_smdp *s, const char *eid, const char *iccid, const char *result)
{
    size_t i = idx_lookup(s, s->by_iccid, iccid, KEY_ICCID);
    if (i == SIZE_MAX || strcmp(s->orders[i].o.eid, eid) != 0)
        return;
    sim_order *o = &s->orders[i].o;
    if (o->state != SIM_ORDER_DOWNLOADED)
        return;
    if (!result || strcmp(result, "ok") == 0) {
        o->state = SIM_ORDER_INSTALLED;
        o->installs++;
    } else {
        o->state = SIM_ORDER_ERROR;
        snprintf(o->error, sizeof o->error, "installation failed: %s", result);
    }
    journal_append(s, o); /* before the 204 confirms it to the eUICC */
    schedule_save(s);
}

/* ---- ES9+ in SGP.22's own form: base64 DER fields ------------------------------------
 *
 * An eUICC that speaks DER (the IoT devices' IPA, through the eIM's relay)
 * sends euiccInfo1, authenticateServerResponse, prepareDownloadResponse,
 * cancelSessionResponse and pendingNotification as base64 DER, as SGP.22
 * 6.5.2 specifies, and gets serverSigned1, smdpSigned2, profileMetadata and
 * the boundProfilePackage the same way; signatures are 5F37 TLVs. Sessions,
 * orders and the checks are those of the JSON form above. */

static bool txid_bytes(const session *ss, uint8_t out[16])
{
    for (size_t i = 0; i < 16; i++) {
        unsigned v;
        if (sscanf(ss->txid + 2 * i, "%2X", &v) != 1)
            return false;
        out[i] = (uint8_t)v;
    }
    return true;
}

static bool txid_is(const session *ss, const TransactionId_t *t)
{
    uint8_t b[16];
    return t && t->size == 16 && txid_bytes(ss, b) && memcmp(t->buf, b, 16) == 0;
}

/* Base64 of |td|'s DER into |resp|[key]. */
static esim_err set_der(json_t *resp, const char *key, const asn_TYPE_descriptor_t *td,
                        const void *obj)
{
    esim_buf der = {0};
    esim_err rc = sgp32_encode(td, obj, &der, NULL);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(resp, key, der.data, der.len);
    esim_buf_free(&der);
    return rc;
}

/* Signs |data| with our key; |resp|[key] gets base64 of the 5F37 TLV. */
static esim_err set_sig(sim_smdp *s, json_t *resp, const char *key, const esim_buf *data,
                        unsigned char sig[64])
{
    esim_buf tlv = {0};
    esim_err rc = dp_sign(s, data->data, data->len, sig, NULL);
    if (rc == ESIM_OK)
        rc = sgp32_tlv_wrap(0x5F37, sig, 64, &tlv);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(resp, key, tlv.data, tlv.len);
    esim_buf_free(&tlv);
    return rc;
}

/* The base64 DER at |key| decoded as |td| (sgp32_decode's strict DER). */
static void *get_der(const json_t *body, const char *key, const asn_TYPE_descriptor_t *td)
{
    esim_buf raw = {0};
    void *obj = NULL;
    if (sim_json_b64(body, key, &raw, NULL) == ESIM_OK)
        sgp32_decode(td, raw.data, raw.len, &obj, NULL);
    esim_buf_free(&raw);
    return obj;
}

/* |pub| verifies |sig| (64 bytes, r‖s) over |td|'s DER of |obj|. */
static bool der_sig_ok(sim_smdp *s, const euicc_key *pub, const asn_TYPE_descriptor_t *td,
                       const void *obj, const OCTET_STRING_t *sig)
{
    if (!pub || !sig || sig->size != 64)
        return false;
    esim_buf der = {0};
    bool ok = sgp32_encode(td, obj, &der, NULL) == ESIM_OK &&
              euicc_signed(s, pub, der.data, der.len, sig->buf, 64);
    esim_buf_free(&der);
    return ok;
}

static esim_err initiate_der_answer(sim_smdp *s, session *ss, json_t *resp)
{
    ServerSigned1_t s1 = {0};
    uint8_t tx[16];
    esim_buf der = {0}, skid = {0};
    unsigned char sig[64];
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(s->pki->ci.x509);
    esim_err rc = txid_bytes(ss, tx) && ski ? ESIM_OK : ESIM_EINVAL;
    if (rc == ESIM_OK &&
        (OCTET_STRING_fromBuf(&s1.transactionId, (const char *)tx, 16) != 0 ||
         OCTET_STRING_fromBuf(&s1.euiccChallenge, (const char *)ss->euicc_challenge, 16) != 0 ||
         OCTET_STRING_fromString(&s1.serverAddress, ss->server_address) != 0 ||
         OCTET_STRING_fromBuf(&s1.serverChallenge, (const char *)ss->server_challenge, 16) != 0))
        rc = ESIM_ENOMEM;
    if (rc == ESIM_OK)
        rc = sgp32_encode(&asn_DEF_ServerSigned1, &s1, &der, NULL);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(resp, "serverSigned1", der.data, der.len);
    if (rc == ESIM_OK)
        rc = set_sig(s, resp, "serverSignature1", &der, sig);
    if (rc == ESIM_OK)
        rc = sgp32_tlv_wrap(0x04, ASN1_STRING_get0_data(ski), (size_t)ASN1_STRING_length(ski),
                            &skid);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(resp, "euiccCiPKIdToBeUsed", skid.data, skid.len);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_ServerSigned1, &s1);
    esim_buf_free(&der);
    esim_buf_free(&skid);
    return rc;
}

/* The eUICC's certificates from the DER answer, checked as verify_euicc does. */
static bool verify_euicc_der(sim_smdp *s, struct evhttp_request *req, const Certificate_t *euicc,
                             const Certificate_t *eum, euicc_key **euicc_out,
                             char eid[ESIM_EID_LEN + 1])
{
    esim_buf a = {0}, b = {0}, a64 = {0}, b64 = {0};
    json_t *o = json_object();
    bool ok =
        o && sgp32_encode(&asn_DEF_Certificate, euicc, &a, NULL) == ESIM_OK &&
        sgp32_encode(&asn_DEF_Certificate, eum, &b, NULL) == ESIM_OK &&
        esim_base64_encode(a.data, a.len, &a64) == ESIM_OK &&
        esim_base64_encode(b.data, b.len, &b64) == ESIM_OK &&
        json_object_set_new(o, "euiccCertificate", json_string((const char *)a64.data)) == 0 &&
        json_object_set_new(o, "eumCertificate", json_string((const char *)b64.data)) == 0;
    if (!ok)
        reply_failed(req, "8.1.3", "6.1", "eUICC certificate is not DER");
    else
        ok = verify_euicc(s, req, o, euicc_out, eid);
    json_decref(o);
    esim_buf_free(&a);
    esim_buf_free(&b);
    esim_buf_free(&a64);
    esim_buf_free(&b64);
    return ok;
}

static void es9_authenticate_client_der(sim_smdp *s, struct evhttp_request *req, json_t *body,
                                        session *ss)
{
    AuthenticateServerResponse_t *asr =
        get_der(body, "authenticateServerResponse", &asn_DEF_AuthenticateServerResponse);
    euicc_key *euicc = NULL;
    char eid[ESIM_EID_LEN + 1];
    json_t *resp = NULL;
    if (!asr || asr->present != AuthenticateServerResponse_PR_authenticateResponseOk) {
        reply_failed(req, "8.1", "2.2",
                     asr ? "the eUICC refused the authentication"
                         : "authenticateServerResponse is not DER AuthenticateServerResponse");
        goto fail;
    }
    AuthenticateResponseOk_t *ok = &asr->choice.authenticateResponseOk;
    if (!verify_euicc_der(s, req, &ok->euiccCertificate, &ok->eumCertificate, &euicc, eid))
        goto fail;
    if (!der_sig_ok(s, euicc, &asn_DEF_EuiccSigned1, &ok->euiccSigned1, &ok->euiccSignature1)) {
        reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
        goto fail;
    }
    EuiccSigned1_t *s1 = &ok->euiccSigned1;
    if (s1->serverChallenge.size != 16 ||
        memcmp(s1->serverChallenge.buf, ss->server_challenge, 16) != 0 ||
        !txid_is(ss, &s1->transactionId) ||
        (size_t)s1->serverAddress.size != strlen(ss->server_address) ||
        memcmp(s1->serverAddress.buf, ss->server_address, s1->serverAddress.size) != 0) {
        reply_failed(req, "8.1", "6.1", "eUICC signed another session's challenge");
        goto fail;
    }
    char mid[65] = "";
    const UTF8String_t *m =
        s1->ctxParams1.present == Es9CtxParams1_PR_ctxParamsForCommonAuthentication
            ? s1->ctxParams1.choice.ctxParamsForCommonAuthentication.matchingId
            : NULL;
    if (m && ((size_t)m->size >= sizeof mid || memchr(m->buf, 0, (size_t)m->size))) {
        reply_failed(req, "8.2.6", "3.8", "matching ID refused: not a matching ID");
        goto fail;
    }
    if (m)
        memcpy(mid, m->buf, m->size);
    size_t oi = choose_order(s, req, eid, mid);
    if (oi == SIZE_MAX)
        goto fail;
    const sim_order *o = &s->orders[oi].o;
    ss->state = SESSION_AUTHENTICATED;
    ss->order = oi;
    ss->euicc_key = euicc;
    euicc = NULL;
    memcpy(ss->eid, eid, sizeof eid);

    Es9StoreMetadataRequest_t md = {0};
    Es9SmdpSigned2_t s2 = {0};
    uint8_t iccid[10], tx[16];
    long cls = ProfileClass_operational;
    esim_buf der = {0};
    unsigned char sig[64];
    resp = json_pack("{s:o, s:s, s:s}", "header", header_ok(), "transactionId", ss->txid,
                     "smdpCertificate", s->dpauth_b64);
    esim_err rc =
        resp && sgp32_iccid_to_bytes(o->iccid, iccid, NULL) == ESIM_OK && txid_bytes(ss, tx) &&
                OCTET_STRING_fromBuf(&md.iccid, (const char *)iccid, 10) == 0 &&
                OCTET_STRING_fromString(&md.serviceProviderName, s->service_provider) == 0 &&
                OCTET_STRING_fromString(&md.profileName, "Simulated eSIM") == 0 &&
                OCTET_STRING_fromBuf(&s2.transactionId, (const char *)tx, 16) == 0
            ? ESIM_OK
            : ESIM_ENOMEM;
    md.profileClass = &cls;
    if (rc == ESIM_OK)
        rc = set_der(resp, "profileMetadata", &asn_DEF_Es9StoreMetadataRequest, &md);
    if (rc == ESIM_OK)
        rc = sgp32_encode(&asn_DEF_Es9SmdpSigned2, &s2, &der, NULL);
    if (rc == ESIM_OK)
        rc = sim_json_set_b64(resp, "smdpSigned2", der.data, der.len);
    if (rc == ESIM_OK)
        rc = set_sig(s, resp, "smdpSignature2", &der, sig);
    md.profileClass = NULL;
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_Es9StoreMetadataRequest, &md);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_Es9SmdpSigned2, &s2);
    esim_buf_free(&der);
    sgp32_free(&asn_DEF_AuthenticateServerResponse, asr);
    if (rc != ESIM_OK) {
        json_decref(resp);
        reply(req, 500, NULL);
        return;
    }
    reply(req, 200, resp);
    return;
fail:
    session_remove(s, ss);
    free(euicc);
    sgp32_free(&asn_DEF_AuthenticateServerResponse, asr);
}

/* The order a GetBoundProfilePackage of |ss| may take; NULL: answered.
 * Consume once: whichever session gets here first takes the profile.
 * Download retry (*retry): an order Downloaded by this very eUICC, with no
 * install notification since (the package never got there: the phone was
 * switched off, the connection dropped), is served to it again and counted
 * as a retry; any notification, or another EID, ends that. */
static sim_order *order_to_bind(sim_smdp *s, struct evhttp_request *req, session *ss, bool *retry)
{
    sim_order *o = &s->orders[ss->order].o;
    *retry = o->state == SIM_ORDER_DOWNLOADED && strcmp(o->eid, ss->eid) == 0;
    if (o->state != SIM_ORDER_RELEASED && !*retry) {
        session_remove(s, ss);
        reply_failed(req, "8.2", "3.7",
                     "profile already downloaded: not available for a new binding");
        return NULL;
    }
    return o;
}

static void order_bound(sim_smdp *s, sim_order *o, bool retry)
{
    o->state = SIM_ORDER_DOWNLOADED;
    if (retry)
        o->retries++;
    else
        o->downloads++;
    journal_append(s, o); /* before the package goes out */
    schedule_save(s);
}

static OCTET_STRING_t *octets_add(void *list, const void *data, size_t len)
{
    OCTET_STRING_t *o = OCTET_STRING_new_fromBuf(&asn_DEF_OCTET_STRING, data, (int)len);
    if (o && ASN_SEQUENCE_ADD(list, o) != 0) {
        ASN_STRUCT_FREE(asn_DEF_OCTET_STRING, o);
        return NULL;
    }
    return o;
}

static esim_err bpp_der_answer(sim_smdp *s, session *ss, const sim_order *o,
                               const OCTET_STRING_t *euicc_sig2, json_t *resp)
{
    Es9BoundProfilePackage_t b = {0};
    Es9StoreMetadataRequest_t md = {0};
    InitialiseSecureChannelRequest_t *i = &b.initialiseSecureChannelRequest;
    uint8_t tx[16], iccid[10], otpk[65];
    static const uint8_t key_type = 0x88, key_len = 0x10;
    static const char profile[] = "simulated profile elements";
    long cls = ProfileClass_operational;
    esim_buf md_der = {0}, input = {0};
    unsigned char sig[64];
    otpk[0] = 0x04;
    esim_err rc = txid_bytes(ss, tx) && sgp32_iccid_to_bytes(o->iccid, iccid, NULL) == ESIM_OK &&
                          esim_random_bytes(otpk + 1, 64) == ESIM_OK
                      ? ESIM_OK
                      : ESIM_EINVAL;
    md.profileClass = &cls;
    if (rc == ESIM_OK &&
        (OCTET_STRING_fromBuf(&md.iccid, (const char *)iccid, 10) != 0 ||
         OCTET_STRING_fromString(&md.serviceProviderName, s->service_provider) != 0 ||
         OCTET_STRING_fromString(&md.profileName, "Simulated eSIM") != 0))
        rc = ESIM_ENOMEM;
    if (rc == ESIM_OK)
        rc = sgp32_encode(&asn_DEF_Es9StoreMetadataRequest, &md, &md_der, NULL);
    i->remoteOpId = InitialiseSecureChannelRequest__remoteOpId_installBoundProfilePackage;
    size_t host = strlen(ss->server_address) > 16 ? 16 : strlen(ss->server_address);
    if (rc == ESIM_OK &&
        (OCTET_STRING_fromBuf(&i->transactionId, (const char *)tx, 16) != 0 ||
         OCTET_STRING_fromBuf(&i->controlRefTemplate.keyType, (const char *)&key_type, 1) != 0 ||
         OCTET_STRING_fromBuf(&i->controlRefTemplate.keyLen, (const char *)&key_len, 1) != 0 ||
         OCTET_STRING_fromBuf(&i->controlRefTemplate.hostId, ss->server_address, (int)host) != 0 ||
         OCTET_STRING_fromBuf(&i->smdpOtpk, (const char *)otpk, sizeof otpk) != 0 ||
         !octets_add(&b.sequenceOf88.list, md_der.data, md_der.len) ||
         !octets_add(&b.sequenceOf86.list, profile, sizeof profile - 1)))
        rc = ESIM_ENOMEM;
    if (rc == ESIM_OK)
        rc = sgp32_bpp_sign_input(&b, euicc_sig2, &input);
    if (rc == ESIM_OK)
        rc = dp_sign(s, input.data, input.len, sig, NULL);
    if (rc == ESIM_OK && OCTET_STRING_fromBuf(&i->smdpSign, (const char *)sig, 64) != 0)
        rc = ESIM_ENOMEM;
    if (rc == ESIM_OK)
        rc = set_der(resp, "boundProfilePackage", &asn_DEF_Es9BoundProfilePackage, &b);
    md.profileClass = NULL;
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_Es9StoreMetadataRequest, &md);
    ASN_STRUCT_FREE_CONTENTS_ONLY(asn_DEF_Es9BoundProfilePackage, &b);
    esim_buf_free(&md_der);
    esim_buf_free(&input);
    return rc;
}

static void es9_get_bpp_der(sim_smdp *s, struct evhttp_request *req, json_t *body, session *ss)
{
    PrepareDownloadResponse_t *pdr =
        get_der(body, "prepareDownloadResponse", &asn_DEF_PrepareDownloadResponse);
    PrepareDownloadResponseOk_t *ok =
        pdr && pdr->present == PrepareDownloadResponse_PR_downloadResponseOk
            ? &pdr->choice.downloadResponseOk
            : NULL;
    if (!ok ||
        !der_sig_ok(s, ss->euicc_key, &asn_DEF_EuiccSigned2, &ok->euiccSigned2,
                    &ok->euiccSignature2) ||
        !txid_is(ss, &ok->euiccSigned2.transactionId)) {
        sgp32_free(&asn_DEF_PrepareDownloadResponse, pdr);
        session_remove(s, ss);
        reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
        return;
    }
    bool retry;
    sim_order *o = order_to_bind(s, req, ss, &retry);
    if (!o) {
        sgp32_free(&asn_DEF_PrepareDownloadResponse, pdr);
        return;
    }
    json_t *resp = json_pack("{s:o, s:s}", "header", header_ok(), "transactionId", ss->txid);
    esim_err rc = resp ? bpp_der_answer(s, ss, o, &ok->euiccSignature2, resp) : ESIM_ENOMEM;
    sgp32_free(&asn_DEF_PrepareDownloadResponse, pdr);
    if (rc != ESIM_OK) {
        json_decref(resp);
        reply(req, 500, NULL);
        return;
    }
    order_bound(s, o, retry);
    ss->state = SESSION_DOWNLOADED;
    reply(req, 200, resp);
}

/* A DER PendingNotification: a ProfileInstallationResult of a session of
 * ours (verified with that session's eUICC certificate), or an
 * OtherSignedNotification (verified with the certificates it carries); an
 * install of an order bound to that eUICC marks it Installed (or Error). */
static void es9_handle_notification_der(sim_smdp *s, struct evhttp_request *req, json_t *body)
{
    PendingNotification_t *pn = get_der(body, "pendingNotification", &asn_DEF_PendingNotification);
    if (!pn) {
        reply_failed(req, "8.1", "2.1", "pendingNotification is not DER PendingNotification");
        return;
    }
    if (pn->present == PendingNotification_PR_profileInstallationResult) {
        ProfileInstallationResult_t *pir = &pn->choice.profileInstallationResult;
        ProfileInstallationResultData_t *d = &pir->profileInstallationResultData;
        char txid[33] = "";
        if (d->transactionId.size == 16)
            txid_hex(d->transactionId.buf, txid);
        session *ss = session_find(s, txid);
        if (ss && ss->state != SESSION_DOWNLOADED)
            ss = NULL;
        char iccid[21] = "", why[64];
        if (!ss) {
            reply_failed(req, "8.10.1", "3.9", "unknown transactionId: no session awaits it");
        } else if (!der_sig_ok(s, ss->euicc_key, &asn_DEF_ProfileInstallationResultData, d,
                               &pir->euiccSignPIR)) {
            reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
        } else {
            if (d->notificationMetadata.iccid &&
                sgp32_iccid_from_bytes(d->notificationMetadata.iccid->buf,
                                       (size_t)d->notificationMetadata.iccid->size, iccid,
                                       NULL) == ESIM_OK) {
                bool ok = d->finalResult.present ==
                          ProfileInstallationResultData__finalResult_PR_successResult;
                if (!ok)
                    snprintf(why, sizeof why, "bppCommandId %ld, errorReason %ld",
                             d->finalResult.choice.errorResult.bppCommandId,
                             d->finalResult.choice.errorResult.errorReason);
                note_install(s, ss->eid, iccid, ok ? NULL : why);
            }
            session_remove(s, ss);
            reply(req, 204, NULL);
        }
        sgp32_free(&asn_DEF_PendingNotification, pn);
        return;
    }
    OtherSignedNotification_t *o = &pn->choice.otherSignedNotification;
    NotificationMetadata_t *t = &o->tbsOtherNotification;
    euicc_key *euicc = NULL;
    char eid[ESIM_EID_LEN + 1], iccid[21] = "";
    if (verify_euicc_der(s, req, &o->euiccCertificate, &o->eumCertificate, &euicc, eid)) {
        if (!der_sig_ok(s, euicc, &asn_DEF_NotificationMetadata, t,
                        &o->euiccNotificationSignature)) {
            reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
        } else {
            bool install = t->profileManagementOperation.size >= 1 &&
                           (t->profileManagementOperation.buf[0] & 0x80);
            if (install && t->iccid &&
                sgp32_iccid_from_bytes(t->iccid->buf, t->iccid->size, iccid, NULL) == ESIM_OK)
                note_install(s, eid, iccid, NULL);
            reply(req, 204, NULL);
        }
    }
    free(euicc);
    sgp32_free(&asn_DEF_PendingNotification, pn);
}

static void es9_cancel_der(sim_smdp *s, struct evhttp_request *req, json_t *body, session *ss)
{
    if (ss->state != SESSION_INITIATED) {
        CancelSessionResponse_t *c =
            get_der(body, "cancelSessionResponse", &asn_DEF_CancelSessionResponse);
        bool ok =
            c && c->present == CancelSessionResponse_PR_cancelSessionResponseOk &&
            txid_is(ss,
                    &c->choice.cancelSessionResponseOk.euiccCancelSessionSigned.transactionId) &&
            der_sig_ok(s, ss->euicc_key, &asn_DEF_EuiccCancelSessionSigned,
                       &c->choice.cancelSessionResponseOk.euiccCancelSessionSigned,
                       &c->choice.cancelSessionResponseOk.euiccCancelSessionSignature);
        sgp32_free(&asn_DEF_CancelSessionResponse, c);
        if (!ok) {
            reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
            return;
        }
    }
    session_remove(s, ss);
    reply(req, 200, json_pack("{s:o}", "header", header_ok()));
}

static void es9_authenticate_client(sim_smdp *s, struct evhttp_request *req, json_t *body)
{
    session *ss = session_find(s, sim_json_str(body, "transactionId"));
    if (!ss || ss->state != SESSION_INITIATED) {
        reply_failed(req, "8.10.1", "3.9", "unknown or already used transactionId");
        return;
    }
    if (ss->der) {
        es9_authenticate_client_der(s, req, body, ss);
        return;
    }
    json_t *asr = json_object_get(body, "authenticateServerResponse");
    euicc_key *euicc = NULL;
    char eid[ESIM_EID_LEN + 1];
    esim_buf raw = {0};
    json_t *signed1 = NULL;
    if (!json_is_object(asr)) {
        reply_failed(req, "8.1", "2.2", "authenticateServerResponse is missing or not an object");
        goto fail_quiet;
    }
    if (!verify_euicc(s, req, asr, &euicc, eid))
        goto fail_quiet;
    if (!signed_blob(asr, "euiccSigned1", &raw, &signed1) ||
        !verify_sig(s, euicc, &raw, asr, "euiccSignature1")) {
        reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
        goto fail_quiet;
    }
    /* The eUICC must have signed *this* session's challenge: a signature
     * replayed from another session names another challenge. */
    if (!b64_equals(sim_json_str(signed1, "serverChallenge"), ss->server_challenge, 16) ||
        !sim_json_str(signed1, "transactionId") ||
        strcmp(sim_json_str(signed1, "transactionId"), ss->txid) != 0 ||
        !sim_json_str(signed1, "serverAddress") ||
        strcmp(sim_json_str(signed1, "serverAddress"), ss->server_address) != 0) {
        reply_failed(req, "8.1", "6.1", "eUICC signed another session's challenge");
        goto fail_quiet;
    }
    json_t *ctx = json_object_get(signed1, "ctxParams1");
    size_t oi = choose_order(s, req, eid, sim_json_str(ctx, "matchingId"));
    if (oi == SIZE_MAX)
        goto fail_quiet;
    const sim_order *o = &s->orders[oi].o;
    ss->state = SESSION_AUTHENTICATED;
    ss->order = oi;
    ss->euicc_key = euicc;
    euicc = NULL;
    memcpy(ss->eid, eid, sizeof eid);

    json_t *resp = json_pack("{s:o, s:s, s:{s:s, s:s, s:s, s:s}}", "header", header_ok(),
                             "transactionId", ss->txid, "profileMetadata", "iccid", o->iccid,
                             "serviceProviderName", s->service_provider, "profileName",
                             "Simulated eSIM", "profileClass", "operational");
    json_t *signed2 = json_pack("{s:s, s:b}", "transactionId", ss->txid, "ccRequiredFlag", 0);
    esim_err rc = ESIM_ENOMEM;
    if (resp && signed2) {
        json_object_set_new(resp, "smdpCertificate", json_string(s->dpauth_b64));
        rc = sign_blob(s, resp, "smdpSigned2", "smdpSignature2", signed2);
        signed2 = NULL;
    }
    json_decref(signed2);
    esim_buf_free(&raw);
    json_decref(signed1);
    if (rc != ESIM_OK) {
        json_decref(resp);
        reply(req, 500, NULL);
        return;
    }
    reply(req, 200, resp);
    return;
fail_quiet:
    /* A failed authentication ends the session: the eUICC must start over. */
    session_remove(s, ss);
    free(euicc);
    esim_buf_free(&raw);
    json_decref(signed1);
}

static void es9_get_bpp(sim_smdp *s, struct evhttp_request *req, json_t *body)
{
    session *ss = session_find(s, sim_json_str(body, "transactionId"));
    if (!ss || ss->state != SESSION_AUTHENTICATED) {
        reply_failed(req, "8.10.1", "3.9", "unknown transactionId or session not authenticated");
        return;
    }
    if (ss->der) {
        es9_get_bpp_der(s, req, body, ss);
        return;
    }
    json_t *pdr = json_object_get(body, "prepareDownloadResponse"), *signed2 = NULL;
    esim_buf raw = {0};
    if (!json_is_object(pdr) || !signed_blob(pdr, "euiccSigned2", &raw, &signed2) ||
        !verify_sig(s, ss->euicc_key, &raw, pdr, "euiccSignature2") ||
        !sim_json_str(signed2, "transactionId") ||
        strcmp(sim_json_str(signed2, "transactionId"), ss->txid) != 0) {
        esim_buf_free(&raw);
        json_decref(signed2);
        session_remove(s, ss);
        reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
        return;
    }
    esim_buf_free(&raw);
    json_decref(signed2);
    bool retry;
    sim_order *o = order_to_bind(s, req, ss, &retry);
    if (!o)
        return;
    json_t *bpp = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:s}", "transactionId", ss->txid,
                            "eid", ss->eid, "iccid", o->iccid, "profileName", "Simulated eSIM",
                            "serviceProviderName", s->service_provider, "profileClass",
                            "operational", "ppr", 0, "smdpAddress", ss->server_address);
    json_t *resp = json_pack("{s:o, s:s}", "header", header_ok(), "transactionId", ss->txid);
    esim_err rc =
        bpp && resp ? sign_blob(s, resp, "boundProfilePackage", "bppSignature", bpp) : ESIM_ENOMEM;
    if (rc != ESIM_OK) {
        if (!resp)
            json_decref(bpp);
        json_decref(resp);
        reply(req, 500, NULL);
        return;
    }
    order_bound(s, o, retry);
    session_remove(s, ss);
    reply(req, 200, resp);
}

static void es9_handle_notification(sim_smdp *s, struct evhttp_request *req, json_t *body)
{
    euicc_key *euicc = NULL;
    char eid[ESIM_EID_LEN + 1];
    esim_buf raw = {0};
    json_t *n = NULL;
    if (!json_object_get(body, "euiccCertificate")) {
        es9_handle_notification_der(s, req, body);
        return;
    }
    if (!verify_euicc(s, req, body, &euicc, eid))
        return;
    if (!signed_blob(body, "pendingNotification", &raw, &n) ||
        !verify_sig(s, euicc, &raw, body, "euiccNotificationSignature")) {
        reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
        goto out;
    }
    const char *ev = sim_json_str(n, "event"), *iccid = sim_json_str(n, "iccid");
    if (ev && strcmp(ev, "install") == 0 && iccid)
        note_install(s, eid, iccid, sim_json_str(n, "result"));
    reply(req, 204, NULL); /* SGP.22: handleNotification answers 204 No Content */
out:
    free(euicc);
    esim_buf_free(&raw);
    json_decref(n);
}

static void es9_cancel(sim_smdp *s, struct evhttp_request *req, json_t *body)
{
    session *ss = session_find(s, sim_json_str(body, "transactionId"));
    if (!ss) {
        reply_failed(req, "8.10.1", "3.9", "unknown transactionId");
        return;
    }
    if (ss->der) {
        es9_cancel_der(s, req, body, ss);
        return;
    }
    if (ss->state == SESSION_AUTHENTICATED) {
        json_t *c = json_object_get(body, "cancelSessionResponse"), *signed_c = NULL;
        esim_buf raw = {0};
        bool ok = json_is_object(c) &&
                  signed_blob(c, "euiccCancelSessionSigned", &raw, &signed_c) &&
                  verify_sig(s, ss->euicc_key, &raw, c, "euiccCancelSessionSignature");
        esim_buf_free(&raw);
        json_decref(signed_c);
        if (!ok) {
            reply_failed(req, "8.1", "6.1", "eUICC signature is invalid");
            return;
        }
    }
    /* The order was never downloaded in this session, so it stays Released. */
    session_remove(s, ss);
    reply(req, 200, json_pack("{s:o}", "header", header_ok()));
}

/* ---- admin ----------------------------------------------------------------------- */

/* The orders and their counts per state; |summary|: the counts only (a
 * manifest of 100,000 orders is 15 MB of JSON, and about 180 MB of the
 * SM-DP+'s memory while it is built: issue 17); |eid|: that EID's orders
 * only (the counts and total still over all). */
static json_t *orders_json(const sim_smdp *s, bool summary, const char *eid)
{
    json_t *arr = json_array(), *counts = json_object();
    size_t c[SIM_ORDER_ERROR + 1] = {0};
    for (size_t i = 0; i < s->n_orders; i++) {
        if (!summary && !eid)
            json_array_append_new(arr, order_json(&s->orders[i].o));
        c[s->orders[i].o.state]++;
    }
    if (!summary && eid)
        for (size_t i = idx_lookup(s, s->by_eid, eid, KEY_EID); i != SIZE_MAX;
             i = s->orders[i].next_same_eid)
            json_array_append_new(arr, order_json(&s->orders[i].o));
    for (int i = 0; i <= SIM_ORDER_ERROR; i++)
        json_object_set_new(counts, sim_order_state_name((sim_order_state)i),
                            json_integer((json_int_t)c[i]));
    return json_pack("{s:o, s:o, s:I, s:{s:I, s:I}}", "orders", arr, "counts", counts, "total",
                     (json_int_t)s->n_orders, "tls", "full", (json_int_t)s->tls_full, "resumed",
                     (json_int_t)s->tls_resumed);
}

/* "Bearer TOKEN" compared in constant time: how long the comparison takes
 * says nothing about how much of a guess was right. */
static bool admin_token_ok(const sim_smdp *s, const char *auth)
{
    size_t want = strlen(s->admin_token);
    if (!auth || strncmp(auth, "Bearer ", 7) != 0)
        return false;
    auth += 7;
    size_t have = strlen(auth);
    /* Always compares |want| bytes, from a buffer as long as the token. */
    char given[sizeof s->admin_token] = {0};
    memcpy(given, auth, have < want ? have : want);
    return (CRYPTO_memcmp(given, s->admin_token, want) == 0) & (have == want);
}

static void admin(sim_smdp *s, struct evhttp_request *req, const char *path)
{
    /* Orders are the operator's: no token configured, no admin endpoint. */
    if (!s->admin_token[0]) {
        reply(req, 403,
              json_pack("{s:s}", "error",
                        "the admin endpoints are off: start the SM-DP+ with an admin token"));
        return;
    }
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!admin_token_ok(s, auth)) {
        reply(req, 401,
              json_pack("{s:s}", "error", "admin token required (Authorization: Bearer ...)"));
        return;
    }
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (strcmp(path, "/admin/orders") == 0 && m == EVHTTP_REQ_GET) {
        const char *q = strchr(evhttp_request_get_uri(req), '?');
        struct evkeyvalq params; /* initialised by evhttp_parse_query_str */
        const char *eid = NULL;
        if (q) {
            if (evhttp_parse_query_str(q + 1, &params) != 0) { /* it cleared them */
                reply(req, 400, json_pack("{s:s}", "error", "malformed query"));
                return;
            }
            eid = evhttp_find_header(&params, "eid");
        }
        if (eid && esim_eid_validate(eid, NULL) != ESIM_OK)
            reply(req, 400, json_pack("{s:s}", "error", "eid= must be a valid EID"));
        else
            reply(req, 200, orders_json(s, q && strstr(q, "summary=1") != NULL, eid));
        if (q)
            evhttp_clear_headers(&params);
        return;
    }
    json_t *body = m == EVHTTP_REQ_POST ? read_json_body(req) : NULL;
    esim_error e2;
    esim_err rc;
    if (strcmp(path, "/admin/orders") == 0 && body) {
        json_t *rel = json_object_get(body, "released");
        const char *mid = sim_json_str(body, "matching_id");
        rc = sim_smdp_add_order(s, sim_json_str(body, "eid"), sim_json_str(body, "iccid"),
                                mid && *mid ? mid : NULL, rel ? json_is_true(rel) : true, &e2);
        if (rc == ESIM_OK)
            reply(req, 201, order_json(sim_smdp_find_order(s, sim_json_str(body, "iccid"))));
        else
            reply(req, rc == ESIM_EEXIST ? 409 : 400, json_pack("{s:s}", "error", e2.msg));
    } else if (strcmp(path, "/admin/orders/release") == 0 && body) {
        rc = sim_smdp_release_order(s, sim_json_str(body, "iccid"), &e2);
        if (rc == ESIM_OK)
            reply(req, 200, order_json(sim_smdp_find_order(s, sim_json_str(body, "iccid"))));
        else
            reply(req, rc == ESIM_ENOTFOUND ? 404 : 409, json_pack("{s:s}", "error", e2.msg));
    } else if (m == EVHTTP_REQ_POST) {
        reply(req, 400, json_pack("{s:s}", "error", "body must be a JSON object"));
    } else {
        reply(req, 404, json_pack("{s:s}", "error", "no such admin endpoint"));
    }
    json_decref(body);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    sim_smdp *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    char path[256];
    size_t n = strcspn(uri, "?");
    if (n >= sizeof path) {
        reply(req, 404, NULL);
        return;
    }
    memcpy(path, uri, n);
    path[n] = '\0';
    if (strncmp(path, "/admin/", 7) == 0) {
        admin(s, req, path);
        return;
    }
    static const char prefix[] = "/gsma/rsp2/es9plus/";
    if (strncmp(path, prefix, sizeof prefix - 1) != 0) {
        reply(req, 404, json_pack("{s:s}", "error", "unknown path"));
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        reply(req, 405, NULL);
        return;
    }
    const char *fn = path + sizeof prefix - 1;
    json_t *body = read_json_body(req);
    if (!body) {
        reply_failed(req, "8.1", "2.1", "body must be a JSON object");
        return;
    }
    if (strcmp(fn, "initiateAuthentication") == 0)
        es9_initiate(s, req, body);
    else if (strcmp(fn, "authenticateClient") == 0)
        es9_authenticate_client(s, req, body);
    else if (strcmp(fn, "getBoundProfilePackage") == 0)
        es9_get_bpp(s, req, body);
    else if (strcmp(fn, "handleNotification") == 0)
        es9_handle_notification(s, req, body);
    else if (strcmp(fn, "cancelSession") == 0)
        es9_cancel(s, req, body);
    else
        reply(req, 404, json_pack("{s:s}", "error", "unknown ES9+ function"));
    json_decref(body);
}

static int smdp_idx = -1, counted_idx = -1;
static pthread_once_t idx_once = PTHREAD_ONCE_INIT;

static void make_indexes(void)
{
    smdp_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    counted_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

/* Counts each completed handshake once: full, or resumed (a session
 * ticket the client offered back). */
static void tls_info(const SSL *cssl, int where, int ret)
{
    (void)ret;
    SSL *ssl = (SSL *)cssl;
    if (!(where & SSL_CB_HANDSHAKE_DONE) || SSL_get_ex_data(ssl, counted_idx))
        return;
    sim_smdp *s = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), smdp_idx);
    SSL_set_ex_data(ssl, counted_idx, s);
    if (s && SSL_session_reused(ssl))
        s->tls_resumed++;
    else if (s)
        s->tls_full++;
}

static struct bufferevent *make_tls_bev(struct event_base *base, void *arg)
{
    sim_smdp *s = arg;
    SSL *ssl = SSL_new(s->ssl);
    if (!ssl)
        return NULL;
    return bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                          BEV_OPT_CLOSE_ON_FREE);
}

/* ---- lifecycle ------------------------------------------------------------------------ */

esim_err sim_smdp_new(struct event_base *base, const sim_smdp_config *cfg, sim_smdp **out,
                      esim_error *err)
{
    if (!base || !cfg || !cfg->pki || !out)
        return esim_fail(err, ESIM_EINVAL, "the SM-DP+ needs an event base and a PKI");
    if (cfg->data_dir && strlen(cfg->data_dir) >= SIM_PATH_MAX - 32)
        return esim_fail(err, ESIM_EINVAL, "data directory path is too long");
    if (cfg->admin_token && strlen(cfg->admin_token) >= 256)
        return esim_fail(err, ESIM_EINVAL, "admin token is longer than 255 bytes");
    sim_smdp *s = calloc(1, sizeof *s);
    if (!s)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    s->base = base;
    s->journal_fd = -1;
    s->pki = cfg->pki;
    snprintf(s->service_provider, sizeof s->service_provider, "%s",
             cfg->service_provider ? cfg->service_provider : "Simulated Operator");
    if (cfg->admin_token)
        snprintf(s->admin_token, sizeof s->admin_token, "%s", cfg->admin_token);
    s->max_sessions = cfg->max_sessions ? cfg->max_sessions : SMDP_MAX_SESSIONS;
    for (s->txid_buckets = 64;
         s->txid_buckets < 2 * s->max_sessions && s->txid_buckets < (1u << 20);)
        s->txid_buckets *= 2;
    s->by_txid = calloc(s->txid_buckets, sizeof *s->by_txid);
    s->session_ttl_ms = cfg->session_ttl_ms ? cfg->session_ttl_ms : SMDP_SESSION_TTL_MS;
    esim_err rc = ESIM_OK;
    esim_buf b64 = {0};
    s->certs = sim_cert_cache_new(SMDP_CERT_CACHE);
    s->keys = esim_p256_cache_new(cfg->key_tables ? cfg->key_tables : SMDP_KEY_TABLES);
    /* GSMA's curve: DPauth's key signs with ECDSA P-256 (SGP.22 §2.6.5). */
    if (!(s->dpauth_sign = sim_ec_signer_new(s->pki->dpauth.key))) {
        rc = esim_fail(err, ESIM_ECRYPTO, "the PKI's DPauth key is not a P-256 private key");
        goto fail;
    }
    if (!s->certs || !s->keys || !s->by_txid ||
        sim_x509_to_b64(s->pki->dpauth.x509, &b64) != ESIM_OK ||
        !(s->dpauth_b64 = strdup((const char *)b64.data))) {
        esim_buf_free(&b64);
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        goto fail;
    }
    esim_buf_free(&b64);
    if (cfg->data_dir) {
        snprintf(s->data_dir, sizeof s->data_dir, "%s", cfg->data_dir);
        rc = esim_mkdirs(s->data_dir, 0755, err);
        if (rc == ESIM_OK)
            rc = load_saved_orders(s, err);
        char jpath[SIM_PATH_MAX + 32];
        snprintf(jpath, sizeof jpath, "%s/orders.journal", s->data_dir);
        if (rc == ESIM_OK &&
            (s->journal_fd = open(jpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0)
            rc = esim_fail(err, ESIM_EIO, "cannot open %s", jpath);
        if (rc != ESIM_OK)
            goto fail;
    }
    s->save_timer = evtimer_new(base, save_timer_cb, s);
    s->ssl = SSL_CTX_new(TLS_server_method());
    if (!s->save_timer || !s->ssl || SSL_CTX_use_certificate(s->ssl, s->pki->server.x509) != 1 ||
        SSL_CTX_use_PrivateKey(s->ssl, s->pki->server.key) != 1 || !esim_tls_server_chain(s->ssl)) {
        rc = esim_fail(err, ESIM_ECRYPTO, "could not set up TLS with the PKI's server certificate");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(s->ssl, TLS1_2_VERSION);
    /* An idle connection gives back its 16 KB read and write buffers (issue
     * 17): between a download's round trips and while the LPA keeps the
     * connection alive, ~34 KB of ~50 KB per connection, and the simulated
     * fleet keeps hundreds open at once. */
    SSL_CTX_set_mode(s->ssl, SSL_MODE_RELEASE_BUFFERS);
    /* Resumption (session tickets) is what makes a returning LPA's new
     * connection cheap: no certificate, no signature. One ticket per
     * handshake, not OpenSSL's default two: an LPA keeps the newest only
     * (one connection at a time to an SM-DP+), and each ticket costs the
     * server ~165,000 instructions (callgrind) to make and the client
     * ~110,000 to take (issue 17). */
    SSL_CTX_set_num_tickets(s->ssl, 1);
    pthread_once(&idx_once, make_indexes);
    if (smdp_idx >= 0 && counted_idx >= 0 && SSL_CTX_set_ex_data(s->ssl, smdp_idx, s))
        SSL_CTX_set_info_callback(s->ssl, tls_info);
    s->http = evhttp_new(base);
    if (!s->http) {
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        goto fail;
    }
    evhttp_set_bevcb(s->http, make_tls_bev, s);
    evhttp_set_gencb(s->http, on_request, s);
    evhttp_set_max_body_size(s->http, SMDP_MAX_BODY);
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    const char *host = cfg->listen_host ? cfg->listen_host : "127.0.0.1";
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, host, cfg->port);
    if (!bs) {
        rc = esim_fail(err, ESIM_EIO, "cannot listen on %s:%u (in use or not a local address)",
                       host, cfg->port);
        goto fail;
    }
    /* Answers without Nagle (the connections accepted take the listener's
     * TCP_NODELAY on Linux): over TLS an answer is several writes, and each
     * after the first waited about 40 ms for the client's delayed ACK. */
    int one = 1;
    (void)setsockopt(evhttp_bound_socket_get_fd(bs), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    s->port = sim_bound_port(evhttp_bound_socket_get_fd(bs));
    if (s->port == 0) {
        rc = esim_fail(err, ESIM_EIO, "cannot read the bound port");
        goto fail;
    }
    snprintf(s->url, sizeof s->url, "https://127.0.0.1:%u", s->port);
    snprintf(s->addr_ip, sizeof s->addr_ip, "127.0.0.1:%u", s->port);
    snprintf(s->addr_localhost, sizeof s->addr_localhost, "localhost:%u", s->port);
    *out = s;
    return ESIM_OK;
fail:
    sim_smdp_free(s);
    return rc;
}

void sim_smdp_free(sim_smdp *s)
{
    if (!s)
        return;
    if (s->save_pending)
        save_now(s, NULL);
    if (s->journal_fd >= 0)
        close(s->journal_fd);
    if (s->http)
        evhttp_free(s->http);
    if (s->save_timer)
        event_free(s->save_timer);
    SSL_CTX_free(s->ssl);
    while (s->sessions) {
        session *n = s->sessions->next;
        session_free(s->sessions);
        s->sessions = n;
    }
    free(s->by_txid);
    sim_cert_cache_free(s->certs);
    esim_p256_cache_free(s->keys);
    sim_ec_signer_free(s->dpauth_sign);
    free(s->dpauth_b64);
    free(s->orders);
    free(s->by_iccid);
    free(s->by_eid);
    free(s->by_mid);
    free(s);
}

size_t sim_smdp_session_count(const sim_smdp *s)
{
    return s->n_sessions;
}

size_t sim_smdp_key_tables_made(const sim_smdp *s)
{
    esim_p256_cache_counts n;
    esim_p256_cache_counts_of(s->keys, &n);
    return (size_t)n.builds;
}

void sim_smdp_tls_handshakes(const sim_smdp *s, size_t *full, size_t *resumed)
{
    *full = s->tls_full;
    *resumed = s->tls_resumed;
}

uint16_t sim_smdp_port(const sim_smdp *s)
{
    return s->port;
}
const char *sim_smdp_url(const sim_smdp *s)
{
    return s->url;
}
