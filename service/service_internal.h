/*
 * service_internal.h — the inside of esim_service, shared by the files of
 * service/ only: the context struct, the HTTP router table, metrics, and the
 * device, API, push and webhook parts' entry points. Not installed.
 */
#ifndef ESIM_SERVICE_SERVICE_INTERNAL_H
#define ESIM_SERVICE_SERVICE_INTERNAL_H

#include <pthread.h>

#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "service/service.h"
#include "service/store.h"
#include "service/tls_session.h"

#define SVC_MAX_HOOKS 16

/* ---- metrics (Prometheus text at /metrics) ---------------------------------- */

enum { M_ROUTE_MDM, M_ROUTE_API, M_ROUTE_OTHER, M_ROUTE_COUNT };
enum { M_CODE_2XX, M_CODE_4XX, M_CODE_5XX, M_CODE_COUNT };

typedef struct {
    uint64_t requests[M_ROUTE_COUNT][M_CODE_COUNT];
    uint64_t checkins[9]; /* by esim_msg_kind - 1 (results are not counted here) */
    uint64_t results[6];  /* by esim_status */
    uint64_t anomalies;
    uint64_t commands_sent;
    uint64_t auth_refused; /* 401/403 on the device side */
    uint64_t rate_limited;
    uint64_t malformed; /* 400 on the device side */
    uint64_t too_big;   /* 413 */
    uint64_t pushes[ESIM_PUSH_SKIPPED + 1];
    uint64_t push_outcomes[8]; /* by apns_outcome */
    uint64_t webhooks_delivered, webhooks_retried, webhooks_failed, webhooks_dropped;
    uint64_t enqueued; /* queue entries created through the service */
    uint64_t store_errors;
    uint64_t identity_cache_hits, identity_cache_misses; /* Mdm-Signature certificates */
    uint64_t identity_cache_keys;   /* ...checked with a kept key, the certificate not parsed */
    uint64_t identity_chain_checks; /* chains verified up to the device CA */
    uint64_t identity_key_tables_before; /* made by key caches a new device CA ended (auth.c) */
    uint64_t
        identity_cache_reads; /* ...of them identities read in place, linked to a kept issuer */
    uint64_t tls_cert_full, tls_cert_resumed;   /* TLS handshakes with a client certificate:
                                                   full (chain checked), resumed from a ticket */
    uint64_t signatures_direct, signatures_cms; /* Mdm-Signatures checked by auth.c's own reader
                                                   / by CMS_verify (fast path only) */
    uint64_t replays_stale, replays_duplicate, signatures_without_time;
    uint64_t api_auth_refused, api_forbidden, api_throttled; /* admin API: 401, 403, 429 */
    uint64_t conn_refused[4];                                /* by M_REFUSED_* */
    uint64_t conn_timeouts[2];                               /* header, body */
    uint64_t conns_admitted;                                 /* connections admitted */
    uint64_t conn_requests[2]; /* requests: a connection's first, on a kept one */
    size_t pending_bytes_peak; /* most request bytes held before their request was complete */
    /* Windows devices (omadm.c, wns.c). */
    uint64_t windows_sessions, windows_sessions_ended, windows_refused;
    uint64_t windows_results[2]; /* acknowledged, error */
    uint64_t windows_commands_sent, windows_channels, windows_bad_channels;
    uint64_t wns_outcomes[6]; /* by wns_outcome */
    uint64_t wns_tokens;      /* OAuth tokens fetched */
} svc_metrics;

enum { M_REFUSED_CAP, M_REFUSED_PEER, M_REFUSED_PEER_BYTES, M_REFUSED_BYTES };

/* ---- per-connection and per-device memory -------------------------------------- */

/* A peer address: its admitted connections and the bytes of its requests
 * still arriving (conn.c). */
typedef struct svc_peer {
    struct svc_peer *next;
    unsigned char addr[16]; /* IPv6, or IPv4-mapped */
    unsigned conns;
    size_t pending;
} svc_peer;

#define SVC_PEER_BUCKETS 1024
#define SVC_CONN_BUCKETS 4096
#define SVC_DEFAULT_MAX_CONNECTIONS 1024u
/* Descriptors kept for everything but device and API connections: the
 * store, APNs, webhooks, pipes, refusals. */
#define SVC_FD_RESERVE 64u

/* One accepted connection (conn.c), found by its bufferevent. Also the
 * commands a device answered NotNow on it: not offered again on it. */
typedef struct svc_conn {
    struct svc_conn *next;
    esim_service *svc;
    struct bufferevent *bev;
    struct evhttp_connection *evcon; /* once admitted */
    struct event *timer;             /* admission, then the current deadline */
    struct evbuffer_cb_entry *input_cb;
    svc_peer *peer;
    bool bev_ref;  /* we hold a reference on |bev| (until admitted) */
    bool admitted; /* counted in the service's and the peer's connections */
    int phase;
    size_t pending;  /* bytes of the request being received */
    size_t line_len; /* header scanner: length of the current line */
    unsigned lines;  /* header lines seen */
    bool kept;       /* has carried a request: the next is on a kept connection */
    char udid[65];
    char **skip;
    size_t n_skip, cap_skip;
} svc_conn;

/* Token bucket per device (rate limit). Kept only while not full. */
typedef struct svc_bucket {
    struct svc_bucket *next;
    double tokens;
    int64_t at_ms;
    char udid[65];
} svc_bucket;

#define SVC_BUCKETS 4096

/* What replay.c remembers of a device's signed requests: its last
 * SVC_REPLAY_RECENT messages at most, in an array that grows from
 * SVC_REPLAY_FIRST as the device sends more within the window (most send a
 * few: about 300 bytes a device instead of 900). */
#define SVC_REPLAY_RECENT 32
#define SVC_REPLAY_FIRST 4
#define SVC_REPLAY_REORDER_MS 5000
typedef struct svc_seen_msg {
    int64_t at;
    uint64_t key;    /* of the body */
    uint64_t origin; /* the peer address it came from, hashed; 0 unknown */
} svc_seen_msg;
typedef struct svc_seen {
    struct svc_seen *next;
    int64_t floor_ms;  /* signatures made at or before this are refused */
    int64_t newest_ms; /* the newest signing time taken */
    int64_t pushed_ms; /* last push sent because of a duplicate */
    svc_seen_msg *recent;
    uint8_t n_recent, cap_recent;
    char udid[65];
} svc_seen;

/* An answer held until the store's group commit is on disk. */
typedef struct svc_reply {
    struct svc_reply *next;
    struct evhttp_request *req;
    int code;
    const char *content_type; /* static strings only */
    esim_buf body;
    bool held; /* its refill (mdm.c), on a pool worker, sends it: send_batch passes it by */
} svc_reply;

/* A device message whose webhooks and result hooks wait for its batch to
 * be committed (nobody hears of a change that could still be undone). */
typedef struct svc_deferred {
    struct svc_deferred *next;
    esim_msg msg;           /* owned */
    bool hook;              /* run the result hooks too */
    struct hook_job *hooks; /* its webhook deliveries, written to the outbox, not started */
    /* Or, instead of a message, a call (svc_after_commit_call). */
    void (*fn)(esim_service *svc, void *ctx);
    void (*free_ctx)(void *ctx);
    void *ctx;
    /* The device's answer, held with no command in it: once the hooks ran,
     * the device's next command (if they queued one) is put in it. */
    struct svc_reply *refill;
    bool refill_wanted;   /* a command was queued for the device while the hooks ran */
    char cert_sha256[65]; /* the identity that sent it, for the refill */
    /* |fn| runs a device's result hooks (svc_after_commit_result): the
     * results-done hooks follow, as after an Apple result. */
    bool result;
    /* A Windows device's held answer (|refill|, with |msg.udid|): the
     * session's message job, which omadm_refill_answers completes, or
     * omadm_held_release lets go when the batch was undone. */
    struct omadm_job *omadm;
} svc_deferred;

/* Failed admin API authentications from one peer address (access.c). */
typedef struct {
    char addr[48];
    unsigned failures;
    int64_t last_ms, locked_until_ms;
} svc_authfail;
#define SVC_SPARE_JOBS 64
#define SVC_AUTHFAIL_SLOTS 256

/* An API key as the service keeps it. */
typedef struct {
    char *name, *token;
    esim_role role;
} svc_key;

/* Rate limits of log lines a peer can cause (log.c). */
enum { SVC_LOGLIM_API_AUTH, SVC_LOGLIM_DEVICE_AUTH, SVC_LOGLIM_IDENTITY, SVC_LOGLIM_COUNT };
typedef struct {
    int64_t window_ms;
    unsigned lines;
    uint64_t suppressed;
} svc_loglim;

/* What a webhook says beyond the message: the device request's query
 * string (url_params; NULL none) and, for a TokenUpdate, the device's
 * token_update_tally (-1: not one). */
typedef struct {
    const char *query;
    int tally;
} svc_event_extra;

typedef struct svc_webhooks svc_webhooks;
typedef struct hook_job hook_job;
typedef struct svc_push svc_push;
struct push_fresh;
typedef struct svc_omadm svc_omadm;
typedef struct svc_wns svc_wns;
typedef struct svc_eim svc_eim;
typedef struct svc_pool svc_pool;

struct esim_service {
    struct event_base *base;
    esim_service_config cfg; /* strings below are the service's copies */
    char *listen, *data_dir, *store_spec, *api_token, *device_ca_path;
    char *tls_cert_path, *tls_key_path, *apns_url, *apns_cert_path, *apns_key_path;
    char *apns_ca_path, *apns_topic, *webhook_secret;
    char *cert_header; /* ESIM_DEVICE_AUTH_HEADER's header name */
    char **webhook_urls;

    store *st;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    int port;
    char url[128];
    SSL_CTX *tls;
    X509_STORE *device_ca;
    struct auth_cache *auth_cache; /* identity certificates already parsed and verified */
    uint32_t device_ca_epoch;      /* +1 when the device CA is replaced: older tickets void */
    tls_sessions *tls_sessions;    /* resumable TLS sessions (auth.c), NULL without TLS */

    struct event *tick_ev;
    /* Group commit: answers wait in |replies| until a store sync that
     * started after their changes has finished. The fsync runs on
     * |sync_thread|; |syncing| is the batch it covers. */
    struct event *flush_ev;
    bool batch_open; /* the store's operations are being batched */
    svc_deferred *deferred, **deferred_tail;
    /* While the hooks of a batch run: its held answers by UDID (open
     * addressing, |refill_cap| a power of two), so an enqueue for one of
     * those devices marks its answer to be completed. */
    svc_deferred **refill_tab;
    size_t refill_cap;
    /* Held answers a module keeps waiting for its store job
     * (esim_service_answers_hold): the hold being taken while the
     * results-done hooks run, and the holds waiting for their release. */
    bool in_results_done;
    struct esim_answer_hold *hold_new, *holds;
    svc_reply *replies, **replies_tail;
    svc_reply *syncing;
    bool sync_busy;
    /* The store's health: failing since the first error after a healthy
     * spell (logged once), until a write is committed again. */
    bool store_failing;
    uint64_t store_failures; /* in this failing spell */
    int64_t synced_count, syncing_count;
    pthread_t sync_thread;
    bool sync_thread_started;
    pthread_mutex_t sync_mu;
    pthread_cond_t sync_cv;
    bool sync_requested, sync_quit;
    esim_err sync_result;
    int sync_pipe[2]; /* the thread says "done" through it */
    struct event *sync_done_ev;
    struct event *stop_ev;
    int stop_pipe[2];
    svc_pool *pool; /* store worker pool (pool.c); NULL: store calls on the loop */
    bool tick_busy; /* the tick's expiry and owed pushes are on a pool worker */

    svc_metrics m;
    int64_t started_ms;
    svc_conn *conn_table[SVC_CONN_BUCKETS];
    svc_peer *peers[SVC_PEER_BUCKETS];
    size_t n_conns;       /* admitted connections */
    size_t pending_bytes; /* bytes of requests still arriving, all connections */
    svc_bucket *buckets[SVC_BUCKETS];
    svc_seen *seen[SVC_BUCKETS]; /* replay.c */
    size_t n_buckets;
    /* Device requests' jobs done with, for the next ones (mdm.c): a job is
     * ≈ 3 KiB, and allocating that much made malloc sort its small free
     * chunks each time (≈ 4,000 instructions a request). */
    void *spare_jobs[SVC_SPARE_JOBS];
    size_t n_spare_jobs;

    svc_push *push;
    svc_webhooks *webhooks;
    svc_omadm *omadm; /* Windows sessions (omadm.c) */
    svc_wns *wns;     /* WNS client (wns.c) */
    svc_eim *eim;     /* the eIM for IoT eUICCs (eim.c) */
    char *eim_id, *eim_key_path, *eim_cert_path, *euicc_ci_path, *eim_smdp_ca_path;
    char *wns_token_url, *wns_client_id, *wns_secret_path, *wns_ca_path;
    /* Without --wns-ca or --eim-smdp-ca: the system's trust store, loaded
     * once at the first client that needs it (curl_loop_system_store) and
     * shared by WNS and the eIM's relay; freed after both. */
    X509_STORE *system_store;

    svc_key *keys; /* the API token first (as "api-token"), then api_keys */
    size_t n_keys;
    svc_authfail authfail[SVC_AUTHFAIL_SLOTS];
    struct esim_api_request *audit; /* the admin request being handled */

    bool log_journal; /* stderr is journald's: "<N>" prefixes, no time */
    /* Lines the loop thread wrote in this pass of the loop, written out in
     * one write(2) by log_flush_ev before the loop waits again (log.c). */
    pthread_mutex_t log_mu;
    esim_buf log_pending;
    struct event *log_flush_ev;
    pthread_t log_loop;  /* the thread that runs the loop, once known (log_on_loop) */
    bool log_loop_known; /* written by that thread only, under log_mu */
    bool log_ready;
    svc_loglim loglim[SVC_LOGLIM_COUNT];
    struct evhttp_request *dev_req; /* the device request being handled */
    char dev_udid[65];              /* its UDID, once parsed (access log) */
    uint64_t apns_failing;          /* APNs failures in a row (0: healthy) */

    /* What modules built on the service registered (service.h). */

    struct {
        esim_service_result_hook fn;
        void *arg;
    } result_hooks[SVC_MAX_HOOKS];
    size_t n_result_hooks;
    struct {
        esim_service_tick_fn fn;
        void *arg;
    } ticks[SVC_MAX_HOOKS];
    size_t n_ticks;
    struct {
        esim_service_metrics_fn fn;
        void *arg;
    } metrics[SVC_MAX_HOOKS];
    size_t n_metrics;
    struct {
        esim_service_close_fn fn;
        void *arg;
    } closes[SVC_MAX_HOOKS];
    size_t n_closes;
    struct {
        esim_service_results_done_fn fn;
        void *arg;
    } results_done[SVC_MAX_HOOKS];
    size_t n_results_done;
    struct {
        esim_service_notify_fn fn;
        void *arg;
    } notify_hooks[SVC_MAX_HOOKS];
    size_t n_notify_hooks;
    /* Other instances' notifications (notify.c). */
    char instance_id[64];
    struct {
        store_listener *l;
        struct event *ev;
        int64_t retry_at;
        uint64_t received, opens;
    } notify;
    struct svc_route *routes; /* admin API routes of modules (api.c) */
    size_t n_routes, cap_routes;
    esim_api_session_fn session_fn; /* browsers' sessions (the dashboard), access.c */
    void *session_arg;
};

/* ---- HTTP helpers (http.c) ------------------------------------------------------ */

/* Sends |code| with |body| (may be NULL) and |content_type| (NULL: none),
 * counting it under |route| for /metrics. Returns the answer when it is
 * held for the group commit (it may still be completed until the flush
 * sends it), NULL when it went at once. */
struct svc_reply *http_reply(esim_service *svc, struct evhttp_request *req, int route, int code,
                             const char *content_type, const void *body, size_t len);
/* As http_reply, with |body| taken (moved into the held answer, or sent
 * and freed): |body| is left empty. */
struct svc_reply *http_reply_take(esim_service *svc, struct evhttp_request *req, int route,
                                  int code, const char *content_type, esim_buf *body);
/* The request body as one contiguous block (NULL when empty); *len its size. */
const unsigned char *http_body(struct evhttp_request *req, size_t *len);
/* Constant-time comparison of two strings (lengths leak, contents do not). */
bool http_secret_equal(const char *a, const char *b);

/* ---- the router (api.c): adding an endpoint is adding a line to its table ------- */

#define API_MAX_PARAMS 4

/* The public esim_api_request (service.h), seen from inside. */
struct esim_api_request {
    esim_service *svc;
    struct evhttp_request *req;
    const char *params[API_MAX_PARAMS]; /* the ':' segments of the pattern, decoded */
    size_t n_params;
    struct evkeyvalq *query; /* decoded query string, may be NULL */
    char who[64];            /* the API key's name ("" before authentication) */
    esim_role role;
    bool audited;     /* an admin action: written to the audit log once answered */
    int status;       /* the answer's HTTP status, once given */
    char detail[256]; /* the error's message, when it failed */
    store *st;        /* the store the handler uses: the service's, or a pool worker's */
    /* A route marked |pooled| runs on a store pool worker when there is one
     * (api.c, "admin requests on the store pool"): its answer is held here
     * and given on the loop, or |then| runs there to finish it. */
    bool on_worker;
    /* An admin action's answer on the loop, with a store pool: held here
     * as a worker's is, and given once its audit entry is written by a
     * job of its own (api.c, api_call_end): a /v1/audit read after the
     * answer shows it, and a slow audit write holds a worker, not the
     * loop. */
    bool hold;
    struct {
        bool set, store_failed;
        int code;
        int route;        /* M_ROUTE_* it is counted under */
        const char *type; /* static */
        esim_buf body;
        const char *headers[2][2]; /* static names and values */
        size_t n_headers;
    } held;
    void (*then)(struct esim_api_request *r, void *arg);
    void *then_arg;
    /* A module route's answer that waits on a store job (esim_api_defer):
     * |late| when the handler had returned by then (the answer ends the
     * request: audit entry, memory). |answered|: given on the loop already
     * (api_send, or a deferred answer). */
    bool deferred, answered, late;
    bool stopped; /* |then| of a job that never ran: the service is stopping */
};
typedef struct esim_api_request api_request;

/* From a handler on the loop (or from a |then|): |run| on a store pool
 * worker with the worker's store in r->st and r->on_worker set (it answers
 * an error, held, or leaves the answer to |then|), then |then| on the loop
 * with the service's store, which answers unless |run| did (r->held.set)
 * or the service stopped first (r->stopped), and frees |arg|. |then| may
 * hand the request on again. Without a pool both run at once on the loop,
 * |run| with the service's store and its answer held all the same. */
void api_store_job(api_request *r, void (*run)(api_request *r, void *arg),
                   void (*then)(api_request *r, void *arg), void *arg);
/* True in a |then| when |run| answered (an error) or the service stopped:
 * |then| only frees what it holds. */
bool api_job_answered(const api_request *r);

typedef void (*api_handler)(api_request *r);

typedef struct {
    enum evhttp_cmd_type method;
    const char *pattern; /* "/v1/devices/:/queue/:" - ':' matches one segment */
    api_handler fn;
    bool needs_token; /* bearer token required */
    bool pooled;      /* with a store pool, runs on a worker: reads only the request's
                       * params and query, uses r->st, answers with api_reply_json,
                       * api_error or api_send, and touches nothing else of the
                       * service (what must run on the loop goes in r->then) */
} api_route;

/* A route's method that matches every method the server takes (NanoMDM's
 * enqueue and push take any). */
#define API_ANY_METHOD                                                                             \
    ((enum evhttp_cmd_type)(EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |                    \
                            EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH))

/* A route a module added with esim_service_add_route. */
typedef struct svc_route {
    enum evhttp_cmd_type method;
    char *pattern;
    esim_api_handler fn;
    void *arg;
    bool public_route; /* no token asked: the handler decides */
    bool pooled;       /* esim_service_add_store_route: on a pool worker when there is one */
} svc_route;

/* Dispatches any request that is not the device endpoint: the table's
 * routes first, then the modules'. */
void api_dispatch(esim_service *svc, struct evhttp_request *req);
/* Frees the modules' routes. */
void api_routes_free(esim_service *svc);

/* JSON replies: api_reply_json steals |body|; api_error writes
 * {"error": {"code": ..., "field": ..., "message": ...}}. */
void api_reply_json(api_request *r, int code, json_t *body);
/* Answers |code| with |body| of |content_type| (static), or holds it when
 * on a worker. */
void api_send(api_request *r, int code, const char *content_type, const void *body, size_t len);
/* Adds an answer header (|name| and |value| static when on a worker). */
void api_add_header(api_request *r, const char *name, const char *value);
void api_error(api_request *r, int code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Parses the body as a JSON object; on failure answers 400 and returns NULL. */
json_t *api_body_json(api_request *r);
/* HTTP status for an esim_err from the store or the service. */
int api_status_for(esim_err rc);

/* NanoMDM's endpoints (nanomdm.c): GET /version, POST|PUT /migration,
 * GET and PUT /v1/pushcert. */
void nano_version(api_request *r);
void nano_migration(api_request *r);
void nano_pushcert_get(api_request *r);
void nano_pushcert_put(api_request *r);

/* Builds a command plist from the API's JSON command object (api_compose.c).
 * ESIM_EINVAL with |field| naming the offending key ("command.queries"). */
esim_err api_compose_command(json_t *command, esim_cmd *out, char field[96], esim_error *err);

/* ---- access (access.c): keys, roles, failed authentications, audit ---------------- */

esim_err access_init(esim_service *svc, esim_error *err);
void access_free(esim_service *svc);
/* "GET", "POST", ... */
const char *access_method_name(enum evhttp_cmd_type m);
/* The request's peer IP address as text ("" unknown). */
void access_peer(struct evhttp_request *req, char out[48]);
/* Checks the request's key against the role |method| |path| needs; false
 * after answering 401, 403 or 429. Fills r->who and r->role. */
bool access_check_request(esim_service *svc, api_request *r, const char *method, const char *path);
/* Notes the answer (|code|, the error's |msg|, either may be 0/NULL) of the
 * admin request being handled, when |req| is it. */
void access_audit_note(esim_service *svc, struct evhttp_request *req, int code, const char *msg);
/* Writes the audit entry of |r| to the service's store (a failure counted). */
void access_audit_write(esim_service *svc, api_request *r, const char *method, const char *path);
/* Writes it to |st| (a pool worker's, in the request's own job), with
 * status r->status; nothing of the service touched. */
esim_err access_audit_add(store *st, const api_request *r, const char *method, const char *path);

/* ---- other instances (notify.c) ------------------------------------------------------ */

/* Names this instance and, on a shared store, opens the listener. */
void notify_start(esim_service *svc);
/* Reopens a lost listener (then the hooks catch up). */
void notify_tick(esim_service *svc, int64_t now);
void notify_free(esim_service *svc);
void notify_metrics(esim_service *svc, esim_buf *out);

/* ---- logs (log.c) ------------------------------------------------------------------ */

void log_setup(esim_service *svc);
/* The calling thread runs |svc|'s loop: its lines wait for the pass's end. */
void log_on_loop(esim_service *svc);
/* Writes the lines still waiting (a clean stop loses none) and frees. */
void log_free(esim_service *svc);
bool svc_log_on(const esim_service *svc, esim_log_level level);
/* One line: |event|, then (key, value) string pairs ending with a NULL
 * key; a NULL value leaves its key out. Never pass a secret. */
void svc_log(esim_service *svc, esim_log_level level, const char *event, ...);
/* The same, at most 10 lines per 10 s for |kind| (SVC_LOGLIM_*); the next
 * line written says how many were left out (suppressed=N). */
void svc_log_limited(esim_service *svc, int kind, esim_log_level level, const char *event, ...);

/* ---- the store's health (service.c) ------------------------------------------------ */

/* A store operation failed (|reason|, the error's words, may be NULL):
 * counted in esim_mdm_store_errors_total, and the first failure after a
 * healthy spell is logged as event=store_failing with its reason. */
void svc_store_failed(esim_service *svc, const char *reason);
/* A write was committed and answered: after failures, logged once as
 * event=store_recovered with how many failures there were. */
void svc_store_ok(esim_service *svc);

/* ---- the device endpoint (mdm.c) -------------------------------------------------- */

void mdm_handle(esim_service *svc, struct evhttp_request *req);
void mdm_prune_buckets(esim_service *svc, int64_t now_ms);
void mdm_spare_jobs_free(esim_service *svc);
/* Puts in each held, empty answer of |list| the device's next command, if
 * the hooks queued one (one store batch for all; if it cannot be committed
 * the answers stay empty and those devices are pushed instead). */
void mdm_refill_answers(esim_service *svc, svc_deferred *list);
/* The same for Windows devices' held SyncML answers (omadm.c): the next
 * queued commands go in before Final, so the session goes on. Called by
 * mdm_refill_answers first; leaves those entries without |refill|. An
 * entry whose |refill| went already (NULL) just ends its session. */
void omadm_refill_answers(esim_service *svc, svc_deferred *list);
/* A held Windows answer whose batch was undone (or the service stops):
 * its session is let go as it would have been without the hold. */
void omadm_held_release(esim_service *svc, struct omadm_job *j);

/* An enqueue in two halves: the store's (checks the command and
 * queues it on |st|; safe on a pool worker, it touches nothing else of the
 * service) and the loop's (counts, refills held answers, pushes). |targets|
 * (may be NULL: read on the loop) are the devices' push targets, read with
 * the store half on the worker. */
esim_err svc_enqueue_store(const esim_service *svc, store *st, const void *command_plist,
                           size_t len, const char *const *udids, size_t n,
                           const esim_enqueue_opts *opts, char uuid_out[128], esim_error *err);
struct push_read;
void svc_enqueue_after(esim_service *svc, const char *const *udids, size_t n,
                       const esim_enqueue_opts *opts, const struct push_read *targets,
                       esim_push_state *pushes);

/* esim_service_enqueue_syncml_on (omadm.c), on |st|: checks
 * and queues, nothing else; |enqueue_failed|: the store failed to queue it
 * (a store failure for the loop to count). */
esim_err svc_syncml_enqueue_on(const esim_service *svc, store *st, const char *uuid,
                               const char *request_type, const char *syncml, size_t len,
                               const char *const *udids, size_t n, const esim_enqueue_opts *opts,
                               char uuid_out[128], bool *enqueue_failed, esim_error *err);

/* ---- the store worker pool (pool.c) ----------------------------------------------- */

#define SVC_POOL_MAX 64

/* One store operation handed to a worker: |run| on the worker's thread with
 * its own store (it sets |rc| and |e|, and touches nothing of the service),
 * then |done| on the loop, which answers and frees the job. */
typedef struct pool_job {
    struct pool_job *next;
    void (*run)(store *st, struct pool_job *j);
    void (*done)(esim_service *svc, struct pool_job *j);
    esim_err rc;
    esim_error e;
    bool ran;   /* false: it never reached a worker (the service stopped) */
    bool admin; /* the admin API's or the campaigns': at most half the workers at once */
} pool_job;

/* Starts the pool when the store is PostgreSQL and cfg.store_pool > 0:
 * opens one connection per worker. */
esim_err pool_start(esim_service *svc, esim_error *err);
/* True when device store operations go to the pool. */
bool pool_on(const esim_service *svc);
void pool_submit(esim_service *svc, pool_job *j);
/* Runs |j|: on a worker when there is a pool (pool_submit), else at once on
 * the loop's own store, its |done| called before this returns. */
void pool_run(esim_service *svc, pool_job *j);
/* Joins the workers, completes every job (those never run with
 * ESIM_ESTORE), closes the connections. */
void pool_stop(esim_service *svc);
void pool_metrics(esim_service *svc, esim_buf *out);

/* Who signed a device request, as auth.c found it. */
typedef struct {
    char cert_sha256[65];  /* the identity certificate's hash; "" in mode none */
    int64_t not_before_ms; /* its notBefore; 0 unknown */
    int64_t signed_at_ms;  /* the Mdm-Signature's signingTime; 0 none (or mTLS) */
} auth_identity;

/* Device identity (auth.c): verifies the request's certificate per the
 * configured mode. ESIM_EAUTH -> 401 (unsigned, bad signature),
 * ESIM_ECRYPTO -> 403 (does not chain to the device CA). */
esim_err auth_device_request(esim_service *svc, struct evhttp_request *req,
                             const unsigned char *body, size_t len, auth_identity *id,
                             esim_error *err);
esim_err auth_load_ca_file(const char *path, const char *what, X509_STORE **out, esim_error *err);
void auth_cache_free(esim_service *svc);
/* P-256 key tables made for the kept-key checks so far (auth.c kept_key):
 * the builds of their cache (core/p256_cache.h), with those of the caches
 * before a device CA reload (auth_cache_free). */
uint64_t auth_key_tables(const esim_service *svc);
/* SHA-256 of |data| with a digest fetched once (OpenSSL 3.0's SHA256()
 * fetches it on every call, which costs more than hashing a message). */
void svc_sha256(esim_service *svc, const void *data, size_t len, unsigned char out[32]);

/* The TLS client certificate of the request, chained to the device CA
 * (Windows devices; mode none: no identity, an empty hash). ESIM_EAUTH ->
 * 401 (none presented), ESIM_ECRYPTO -> 403 (does not chain). */
esim_err auth_tls_identity(esim_service *svc, struct evhttp_request *req, auth_identity *id,
                           esim_error *err);
/* TLS client certificates in the handshake and session resumption for them
 * (auth.c; installed by service.c on the server context when device auth is
 * on: |arg| and the context's app data are the service). auth_tls_verify
 * is the context's certificate verification: the chain to the device CA is
 * checked (once per certificate every 5 minutes), the handshake always goes
 * on (a refused identity gets its 403 per request) and a client whose
 * certificate did not verify gets no session ticket. Sessions resume from
 * svc->tls_sessions (stateful: the client holds only a session ID):
 * auth_tls_session_new keeps each new session there without its peer
 * certificate, a certificate session only when its chain verified and
 * with an identity note of that verification (its digest, when, under
 * which device CA, until when it holds); auth_tls_session_get resumes a
 * certificate session within AUTH_TICKET_MS of that verification, under
 * the same device CA and while the verified chain is within its validity
 * (docs/security.md, "TLS session resumption with client certificates"). */
#define AUTH_SESSION_TIMEOUT_S (15 * 60) /* a TLS session's lifetime, whoever holds it */
#define AUTH_SESSIONS_MAX (1u << 18)     /* sessions kept at most, ≈ 300 bytes each */
int auth_tls_verify(X509_STORE_CTX *ctx, void *arg);
int auth_tls_session_new(SSL *ssl, SSL_SESSION *sess);
SSL_SESSION *auth_tls_session_get(SSL *ssl, const unsigned char *id, int id_len, int *copy);
/* The per-device rate limit (mdm.c): false when |udid| is over it. */
bool rate_allow(esim_service *svc, const char *udid, int64_t now);

/* ---- Windows devices (omadm.c, wns.c) ------------------------------------------------ */

#define OMADM_PATH "/ManagementServer/MDM.svc"
esim_err omadm_init(esim_service *svc, esim_error *err);
void omadm_free(esim_service *svc);
void omadm_handle(esim_service *svc, struct evhttp_request *req);
void omadm_tick(esim_service *svc, int64_t now);
size_t omadm_sessions(const esim_service *svc);
/* The admin API routes for Windows devices (api_windows.c). */
esim_err api_windows_routes(esim_service *svc, esim_error *err);

/* ---- IoT eUICCs: the eIM (eim.c, api_iot.c) ------------------------------------------- */

#define EIM_PATH "/gsma/rsp2/asn1"
esim_err eim_init(esim_service *svc, esim_error *err);
void eim_free(esim_service *svc);
void eim_handle(esim_service *svc, struct evhttp_request *req);
void eim_metrics(esim_service *svc, esim_buf *out);
/* The admin API routes for IoT eUICCs (api_iot.c). */
esim_err api_iot_routes(esim_service *svc, esim_error *err);
/* Reads a package description (esim_service_enqueue_iot_on) into its stored
 * form |*norm| (caller's, json_decref), its kind ("psmo", "eco",
 * "download", "euicc_data"), SGP.32 request type and a summary in words.
 * ESIM_EINVAL with |field| naming what is wrong. */
esim_err eim_package_read(json_t *desc, json_t **norm, char kind[16], char request_type[64],
                          char summary[256], char field[64], esim_error *err);
/* What the store halves below leave for the loop to count. */
typedef struct {
    uint64_t store_errors, enqueued;
} eim_counts;
/* An IoT eUICC's registration (POST /v1/iot/devices), on |st| (a pool worker's, or the
 * service's): one unit; |counts| add up what the loop counts. */
esim_err eim_iot_register_on(store *st, const char *eid, int64_t token, int64_t counter,
                             bool *created, eim_counts *counts, esim_error *err);
/* esim_service_enqueue_iot_on, the UUID used in |uuid_out|: checks and queues. */
esim_err eim_enqueue_iot_on(store *st, const char *uuid, const char *package_json,
                            const char *const *eids, size_t n, const esim_enqueue_opts *opts,
                            char uuid_out[128], esim_error *err);

esim_err wns_init(esim_service *svc, esim_error *err);
void wns_free(esim_service *svc);
bool wns_configured(const esim_service *svc);
/* Wakes a Windows device through its ChannelURI; never blocks. */
esim_push_state wns_push(esim_service *svc, const char *udid, const char *channel_uri);
void wns_metrics(esim_service *svc, esim_buf *out);

/* ---- connections (conn.c) ------------------------------------------------------------- */

/* Settles the limits' defaults (the descriptor limit decides the cap). */
esim_err conn_setup(esim_service *svc, esim_error *err);
/* evhttp's bevcb: the bufferevent of a new connection, admitted just after. */
struct bufferevent *conn_new_bufferevent(esim_service *svc);
/* After binding: accept errors pause accepting instead of spinning. */
void conn_listener_ready(esim_service *svc);
/* A complete request goes to its handler. False: its connection is being
 * refused; leave the request alone (it goes with the connection). */
bool conn_request_started(esim_service *svc, struct evhttp_request *req);
/* The connection a request came on, or NULL. */
svc_conn *conn_of(esim_service *svc, struct evhttp_connection *evcon);
/* A non-zero number standing for the request's peer address (0 unknown). */
uint64_t conn_origin(esim_service *svc, struct evhttp_request *req);
void conn_forget_all(esim_service *svc);
void conn_tick(esim_service *svc);
void conn_metrics(esim_service *svc, esim_buf *out);

/* ---- replays (replay.c) ---------------------------------------------------------------- */

typedef enum { SVC_REPLAY_FRESH, SVC_REPLAY_DUPLICATE, SVC_REPLAY_STALE } svc_replay_verdict;
/* Judges a request |udid| signed at |signed_at| (0: no signing time) and
 * remembers it when fresh. |origin| (0: unknown) stands for the peer
 * address (conn_origin). STALE: refuse it (|err| says why); DUPLICATE: the
 * same message signed at the same second was taken already, from another
 * address. */
svc_replay_verdict replay_check(esim_service *svc, const char *udid, int64_t signed_at,
                                const void *body, size_t len, uint64_t origin, int64_t now,
                                esim_error *err);
/* True at most once a second per device: push it after a duplicate. */
bool replay_push_allowed(esim_service *svc, const char *udid, int64_t now);
void replay_prune(esim_service *svc, int64_t now);
void replay_free(esim_service *svc);

/* ---- push (push.c) ------------------------------------------------------------------ */

esim_err push_init(esim_service *svc, esim_error *err);
void push_free(esim_service *svc);
/* Pushes the device once; *state (may be NULL) says what happened, and
 * |apns_id| (may be NULL) receives the apns-id the push went out with
 * (empty unless sent). */
esim_err push_device(esim_service *svc, const char *udid, esim_push_state *state,
                     char apns_id[ESIM_UUID_LEN + 1], esim_error *err);
/* As push_device, with the device's push target already read from the store
 * (on a pool worker): no store call. */
void push_send(esim_service *svc, const store_push_target *t, esim_push_state *state,
               char apns_id[ESIM_UUID_LEN + 1], esim_error *err);
/* A device's push target as push_device reads it, read on a pool worker
 * for a push on the loop: the target, or why it could not be read. */
typedef struct push_read {
    store_push_target t;
    esim_err rc;
    esim_error e;
} push_read;
/* Reads the targets of |udids| on |st| (a worker's): NULL when out of
 * memory (the caller pushes with push_device on the loop instead). */
push_read *push_read_targets(store *st, const char *const *udids, size_t n);
/* push_device with the target read already: the same outcome, no store. */
esim_err push_read_send(esim_service *svc, const push_read *pr, esim_push_state *state,
                        char apns_id[ESIM_UUID_LEN + 1], esim_error *err);
/* Pushes the device when no one waits for the outcome: its target is read
 * on a store pool worker (at once on the loop without a pool), the push
 * goes out on the loop afterwards. */
void push_later(esim_service *svc, const char *udid);
/* What a push's answer (APNs or WNS) leaves in the store, written as an
 * admin job on the store pool (at once without one): the push recorded
 * (SENT), the token dead (DEAD), or a push_failed event with |detail|
 * (FAILED; |udid| NULL for one of no device). */
typedef enum { PUSH_NOTE_SENT, PUSH_NOTE_DEAD, PUSH_NOTE_FAILED } push_note_kind;
void push_note(esim_service *svc, push_note_kind kind, const char *udid, const char *detail,
               int64_t now);
bool push_configured(const esim_service *svc);
/* The APNs topic pushes go out under, or NULL without APNs. */
const char *push_topic(const esim_service *svc);
/* The loaded push certificate's topic and notAfter (ms).
 * ESIM_ENOTFOUND: none (no APNs, or no certificate). */
esim_err push_cert_info(esim_service *svc, char topic[256], int64_t *not_after, esim_error *err);
/* PUT /v1/pushcert: |pem| holds a certificate and its unencrypted key;
 * stored as DATA_DIR/apns-push.pem and .key (0600), and the APNs client is
 * replaced by one using them. ESIM_EINVAL bad input, ESIM_ESTATE no APNs
 * URL, ESIM_ECRYPTO unusable; nothing changes then. */
esim_err push_replace_cert(esim_service *svc, const void *pem, size_t len, char topic[256],
                           int64_t *not_after, esim_error *err);
/* SIGHUP, first half: reads the push certificate and key files in use
 * again (those of --apns-cert/--apns-key, or the ones PUT /v1/pushcert
 * stored) and, when their bytes changed, makes *fresh a client from them.
 * Nothing in |svc| changes; *fresh is NULL when there is nothing new.
 * ESIM_ECRYPTO or ESIM_EIO: the new files are unusable (the reload is
 * refused). */
esim_err push_reload_prepare(esim_service *svc, struct push_fresh **fresh, esim_error *err);
/* Second half: the running client replaced by |fresh| (NULL: nothing);
 * takes |fresh|. */
void push_reload_commit(esim_service *svc, struct push_fresh *fresh);
/* Frees an unused |fresh| (NULL accepted). */
void push_reload_discard(struct push_fresh *fresh);
/* The certificate and key files the push client was made from, as
 * configured (NULL when the service started without --apns-cert, whatever
 * PUT /v1/pushcert stored since): what a reload compares its config with. */
const char *push_configured_cert(const esim_service *svc);
const char *push_configured_key(const esim_service *svc);
const char *push_configured_topic(const esim_service *svc);
/* Appends push-client metrics (Prometheus lines) to |out|. */
void push_metrics(esim_service *svc, esim_buf *out);

/* ---- webhooks (webhook.c) ------------------------------------------------------------ */

/* Sets up the deliveries and starts again those the store's outbox still
 * holds from before a restart. */
esim_err webhooks_init(esim_service *svc, esim_error *err);
void webhooks_free(esim_service *svc);
/* A shared outbox (several instances): renews this instance's claims and
 * takes the rows of an instance that died. */
void webhooks_tick(esim_service *svc, int64_t now);
/* The deliveries of a device message (|msg| parsed, |raw| the body the
 * device sent), one per URL, each written to the store's outbox at once:
 * inside the open batch when there is one, so the row commits with the
 * change it reports. Not started yet; NULL without webhooks. Never blocks. */
hook_job *webhooks_prepare(esim_service *svc, const esim_msg *msg, const void *raw, size_t len,
                           const svc_event_extra *x);
/* The same for a store without batches (PostgreSQL), so that the rows
 * commit in the unit of the change they report: the event (a new event id)
 * and its rows, one per URL, written on |st| inside the caller's open unit,
 * claimed by this instance; the deliveries, not started, in *out (NULL
 * without webhooks). Runs on any thread (a pool worker's, with the
 * worker's store): it reads the service's configuration only. An error
 * fails the unit (the caller undoes it: change and events together or
 * neither). */
esim_err webhooks_write(const esim_service *svc, store *st, const esim_msg *msg, const void *raw,
                        size_t len, const svc_event_extra *x, hook_job **out, esim_error *err);
/* Whether device paths write their events' rows in their own unit
 * (webhooks_write) rather than in the loop turn's batch
 * (webhooks_prepare): with webhooks, on a store without batches. */
bool webhooks_in_unit(const esim_service *svc);
/* Starts them once their batch committed; or forgets them when it was
 * undone (their outbox rows went with it). Both take NULL. */
void webhooks_launch(esim_service *svc, hook_job *jobs);
void webhooks_discard(hook_job *jobs);
size_t webhooks_pending(const esim_service *svc);

/* ---- text (utf8.c) ------------------------------------------------------------------ */

/* True when |s| is valid UTF-8 (as jansson takes it). */
bool svc_utf8_valid(const char *s);
/* Replaces, in place, every byte not part of a valid UTF-8 sequence by '?'. */
void svc_utf8_sanitize(char *s);

/* ---- service.c -------------------------------------------------------------------------- */

/* Runs the registered result hooks. */
void svc_run_result_hooks(esim_service *svc, const esim_service_result *r);
/* Opens a store batch for this loop turn (group mode); the flush commits it. */
void svc_batch_open(esim_service *svc);
/* Posts |msg|'s webhooks and, when |hook|, runs the result hooks once its
 * changes are committed: at once when answers are not held (store sync
 * full), else at the flush that sends the held answers, right after the
 * batch commits (then |msg| is taken over and left zeroed). |refill| (may
 * be NULL): the device's held answer, empty, that is to carry the next
 * command the hooks queue for it; |cert| the identity that sent |msg|;
 * |x| (may be NULL) what the webhook says beyond |msg|. */
void svc_after_commit(esim_service *svc, esim_msg *msg, const void *raw, size_t len,
                      const svc_event_extra *x, bool hook, struct svc_reply *refill,
                      const char *cert);
/* svc_after_commit for deliveries already written with the change, in its
 * unit (webhooks_write): |hooks| are started (taken) as svc_after_commit
 * would start those it writes. */
void svc_after_commit_written(esim_service *svc, esim_msg *msg, struct hook_job *hooks, bool hook,
                              struct svc_reply *refill, const char *cert);
/* Like svc_after_commit_call for a |fn| that runs the result hooks of a
 * result: deferred whenever answers wait for their batch (as
 * svc_after_commit), and followed by the results-done hooks. */
void svc_after_commit_result(esim_service *svc, void (*fn)(esim_service *, void *), void *ctx,
                             void (*free_ctx)(void *));
/* Holds |r|, the Windows device |udid|'s answer with no command in it,
 * for omadm_refill_answers once the hooks of its batch ran; |j| is the
 * message's job (omadm.c). False when answers are not held (nothing to
 * wait for) or out of memory: then |r| goes as it is. */
bool svc_after_commit_refill(esim_service *svc, const char *udid, struct svc_reply *r,
                             struct omadm_job *j);
/* Sends one held answer whose batch is committed, and frees it. */
void svc_reply_send(esim_service *svc, svc_reply *r);
/* Calls |fn|(svc, |ctx|) once the changes made so far are committed (at
 * once without a batch), then |free_ctx|(ctx) (may be NULL). */
void svc_after_commit_call(esim_service *svc, void (*fn)(esim_service *, void *), void *ctx,
                           void (*free_ctx)(void *));
/* Writes the Prometheus text for /metrics into |out|. */
esim_err svc_metrics_text(esim_service *svc, esim_buf *out);

#endif
