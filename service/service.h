/*
 * service.h — the esim-mdm MDM service: the Apple MDM check-in and command
 * endpoint devices talk to (PUT /mdm, PUT /checkin), the JSON admin API under
 * /v1/ (docs/api.md), /metrics and /healthz, APNs pushes and webhooks, all on
 * one caller-owned libevent loop, over the store in service/store.h.
 *
 * There is no global state: each esim_service is independent, so one process
 * may run several. Nothing here prints; start-up failures come back as
 * esim_err plus an esim_error sentence. A process embedding the service must
 * ignore SIGPIPE (signal(SIGPIPE, SIG_IGN)): a client that hangs up while
 * its answer is written would otherwise kill it. libcurl (webhooks) must be
 * initialised (curl_global_init) before the first service is made.
 */
#ifndef ESIM_SERVICE_SERVICE_H
#define ESIM_SERVICE_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/esim.h"
#include "plist/esim_plist.h"
#include "service/store.h"

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;

typedef struct esim_service esim_service;

/* How a device proves who it is (PROTOCOLS.md §3, "Device identity"). */
typedef enum {
    /* The Mdm-Signature header: base64 CMS detached signature of the body by
     * the device's identity certificate, which must chain to the device CA. */
    ESIM_DEVICE_AUTH_SIGNATURE = 0,
    /* The TLS client certificate (needs TLS), chaining to the device CA. */
    ESIM_DEVICE_AUTH_MTLS = 1,
    /* No identity at all: local experiments only. */
    ESIM_DEVICE_AUTH_NONE = 2,
    /* The client certificate a TLS-terminating proxy passes in an HTTP
     * header (cert_header; NanoMDM's -cert-header): RFC 9440 ":base64 DER:"
     * or a URL-escaped PEM, chaining to the device CA. Whoever can reach
     * the service without the proxy can claim any identity: see
     * docs/service.md, "Device identity". */
    ESIM_DEVICE_AUTH_HEADER = 3,
} esim_device_auth;

/* "signature", "mtls", "none", "header" -> the mode; ESIM_EINVAL otherwise. */
ESIM_EXTERN esim_err esim_device_auth_parse(const char *word, esim_device_auth *out,
                                            esim_error *err);

/* ---- API keys and roles ----------------------------------------------------------
 * Every admin API request names a key (Authorization: Bearer KEY, or Basic
 * with the key as password); the key's role decides what it may do, by one
 * rule for every route (esim_api_role_needed), the modules' included. The
 * roles are ordered: each may do what the ones before it may. */
typedef enum {
    ESIM_ROLE_NONE = 0,      /* no key, or an unknown one */
    ESIM_ROLE_READ_ONLY = 1, /* reads: GET (HEAD) everywhere but the audit log */
    ESIM_ROLE_OPERATOR = 2,  /* also changes: commands, pushes, cancels, campaigns, groups */
    ESIM_ROLE_ADMIN = 3,     /* also retires devices, reads the audit log, replaces the
                                push certificate, imports check-ins (/migration) */
} esim_role;

/* "read-only", "operator", "admin" ("none" for ESIM_ROLE_NONE). */
ESIM_EXTERN const char *esim_role_name(esim_role role);
/* The names above ("readonly" and "read" are taken too) -> the role;
 * ESIM_EINVAL otherwise. */
ESIM_EXTERN esim_err esim_role_parse(const char *word, esim_role *out, esim_error *err);

/* The role a request needs: |method| ("GET", ...) on |path| (no query).
 *   admin      GET /v1/audit..., DELETE /v1/devices/{udid}, any change of
 *              /v1/pushcert, /migration;
 *   operator   /v1/push/... (any method), every other change (POST, PUT,
 *              DELETE);
 *   read-only  every other GET or HEAD. */
ESIM_EXTERN esim_role esim_api_role_needed(const char *method, const char *path);

/* One API key. */
typedef struct {
    const char *name;  /* who, in the audit log and the logs: 1-63 of [A-Za-z0-9._@-] */
    const char *token; /* the secret: 16 to ESIM_TOKEN_MAX bytes, no space or control */
    esim_role role;
} esim_api_key;

/*
 * Reads an API keys file: one key a line, "NAME ROLE TOKEN" separated by
 * spaces or tabs; blank lines and lines starting with '#' are skipped. The
 * file must be private (chmod 600: esim_check_private_file). A bad line, a
 * name or token used twice: ESIM_EINVAL naming the line (never the token).
 * *keys (and the strings it points to) is freed with esim_api_keys_free.
 */
ESIM_EXTERN esim_err esim_api_keys_load(const char *path, esim_api_key **keys, size_t *n,
                                        esim_error *err);
ESIM_EXTERN void esim_api_keys_free(esim_api_key *keys, size_t n);

/* ---- logs ---------------------------------------------------------------------------
 * One line per event on standard error (or log_fd), in logfmt
 * (ts=... level=info event=access method=GET ...) or JSON, at or above a
 * level. Under systemd (JOURNAL_STREAM set) each line starts with its
 * syslog priority (<6>) and leaves the time to the journal. No secret is
 * ever written: no API key, token, push magic, key or request body. */
typedef enum {
    ESIM_LOG_OFF = 0, /* the default: a library prints nothing */
    ESIM_LOG_DEBUG,
    ESIM_LOG_INFO,
    ESIM_LOG_WARN,
    ESIM_LOG_ERROR,
} esim_log_level;

/* Writes one line to |svc|'s log at |level|: |event| and, when not NULL, a
 * reason (for the program that runs the service: its SIGHUP refusals). */
ESIM_EXTERN void esim_service_log(esim_service *svc, esim_log_level level, const char *event,
                                  const char *reason);

/* "debug", "info", "warn" ("warning"), "error", "off" -> the level. */
ESIM_EXTERN esim_err esim_log_level_parse(const char *word, esim_log_level *out, esim_error *err);

/*
 * Service settings: esim_service_config_init() first, then set what you need.
 * Strings are borrowed until esim_service_new() returns (it copies them).
 */
typedef struct {
    /* "IPv4:PORT" or "[IPv6]:PORT"; port 0 picks a free one (see
     * esim_service_port). Default "127.0.0.1:8080". */
    const char *listen;
    /* Where the default store lives (<data_dir>/esim-mdm.db). */
    const char *data_dir;
    /* Store specification (store_open): "sqlite:PATH"; NULL = in data_dir. */
    const char *store;
    /* When commits reach the disk: STORE_SYNC_GROUP (default: answers wait
     * for one shared fsync per loop turn), FULL (fsync per commit) or NORMAL
     * (no fsync: survives process crashes, not power cuts). */
    store_sync store_sync;
    /* PostgreSQL: how many worker threads, each with a connection of its
     * own, run the device path's store operations (check-ins, results) off
     * the event loop. Default 4 (esim_service_config_init); 0 runs them on
     * the loop on the service's one connection. Ignored for SQLite. */
    int store_pool;

    /* Bearer token for /v1/: an admin key named "api-token". NULL or empty
     * and no api_keys: the admin API answers 401 to everything (the device
     * side still works). */
    const char *api_token;
    /* More API keys, each with its role (copied). */
    const esim_api_key *api_keys;
    size_t n_api_keys;
    /* Failed authentication: after this many in a row from one IP address
     * (default 5), each further one locks that address out of the admin API
     * for twice as long as the last (1 s, 2 s, ... at most 60 s): 429 with
     * Retry-After, whatever key it sends. */
    unsigned auth_failures_free;

    esim_device_auth device_auth; /* default ESIM_DEVICE_AUTH_SIGNATURE */
    const char *device_ca_path;   /* PEM bundle; required unless auth is none */
    /* ESIM_DEVICE_AUTH_HEADER: the header's name; NULL = "Client-Cert". */
    const char *cert_header;

    /* NanoMDM's /migration endpoint (API token): Authenticate, TokenUpdate
     * and SetBootstrapToken check-ins of devices enrolled with another
     * server, taken without a device identity. Off by default. */
    bool migration;

    /* TLS for every endpoint; both or neither. With device_auth MTLS, TLS is
     * required and clients are asked for a certificate. */
    const char *tls_cert_path;
    const char *tls_key_path;

    /* Device-side limits. */
    size_t max_body;       /* bytes; default 1 MiB; larger bodies get 413 */
    unsigned max_depth;    /* plist nesting; default 32 */
    double device_rate;    /* sustained requests per second per device; default 20 */
    unsigned device_burst; /* bucket size; default 40 */

    /* Connection limits, the same for devices and the admin API. 0 = the
     * default. A refused connection gets a 503 (plain HTTP; over TLS it is
     * closed), counted in /metrics. */
    unsigned max_connections;          /* open at once; default 1024, less when the
                                          descriptor limit (ulimit -n) keeps 64 fewer */
    unsigned max_connections_per_peer; /* from one IP address; default 512 */
    /* Bytes of requests still arriving (nothing is authenticated before its
     * request is complete): per IP address, default max(8 MiB, 8 requests of
     * max_body), and in all, default 8 times that. */
    size_t max_pending_bytes_per_peer;
    size_t max_pending_bytes;
    /* Deadlines: the request header within header_timeout_ms of the
     * connection being ready for it (accepted, or the previous answer sent;
     * default 30000), then the body within body_timeout_ms (default 60000),
     * however slowly the bytes trickle in. Late: 408 and closed. */
    int header_timeout_ms;
    int body_timeout_ms;

    /* Replays (device_auth SIGNATURE): an Mdm-Signature whose signingTime
     * is further than this from the service's clock is refused, and a
     * device's messages are remembered this long to refuse replays of them
     * (docs/security.md, "Replays"). Default 600000 (10 minutes); negative
     * turns the check off. */
    int64_t replay_window_ms;
    /* Refuse signatures without a signingTime (default: take them, counted
     * in /metrics, as they cannot be checked for replays). */
    bool require_signing_time;

    /* NotNow: a device that said NotNow is owed a push this long after
     * (durably: the debt survives a restart). Default 30000. */
    int64_t not_now_backoff_ms;

    /* APNs (apns/apns.h). NULL url: no pushes are sent; they are reported
     * "pending" and the device gets its commands when it next checks in. */
    const char *apns_url;
    const char *apns_cert_path;
    const char *apns_key_path;
    const char *apns_ca_path; /* NULL: system trust store */
    const char *apns_topic;   /* NULL: the push certificate's UID */

    /* Webhooks: every check-in and result is POSTed as JSON (NanoMDM shape)
     * to each URL, signed with HMAC-SHA256 under webhook_secret (header
     * X-Hmac-Signature, base64) when the secret is set. */
    const char *const *webhook_urls;
    size_t n_webhook_urls;
    const char *webhook_secret;
    int webhook_max_attempts;  /* default 12: about 5 minutes of back-off */
    int webhook_retry_base_ms; /* default 500, doubling, capped at 60 s */
    int webhook_timeout_ms;    /* per attempt, default 5000 */
    size_t webhook_queue_max;  /* deliveries held before the oldest are dropped; default 10000 */

    /* Housekeeping period: expiry, owed pushes, registered ticks. Default 1000. */
    int tick_ms;

    /* Windows devices (OMA-DM, POST /ManagementServer/MDM.svc; identity is
     * the TLS client certificate, so they need TLS and a device CA). One
     * session may hold at most this many messages (default 64) and bytes
     * (default 16 times max_body); beyond, it is refused (413) and the
     * device starts a new one. */
    unsigned windows_max_messages;
    size_t windows_max_session_bytes;
    /* eSIM operations on Windows are verified in later sessions: a poll
     * every windows_verify_interval_ms (default 30000; the device is woken
     * for it), given up after windows_verify_timeout_ms (default 900000). */
    int64_t windows_verify_interval_ms;
    int64_t windows_verify_timeout_ms;

    /* WNS, to wake Windows devices (NULL token URL: no WNS pushes; the
     * devices get their commands at their next scheduled session). The
     * service asks wns_token_url for an OAuth token with wns_client_id and
     * the secret in wns_secret_path (a private file), then POSTs a raw
     * notification to each device's ChannelURI. wns_ca_path: the CA to
     * trust for both (NULL: the system's). */
    const char *wns_token_url;
    const char *wns_client_id;
    const char *wns_secret_path;
    const char *wns_ca_path;
    int wns_max_attempts;  /* per push, 406/429/5xx retried with back-off; default 4 */
    int wns_retry_base_ms; /* default 500, doubling */
    int wns_timeout_ms;    /* a push's answer, counted from its sending; default 10000 */

    /* The eIM (SGP.32, docs/iot.md): IoT eUICCs poll POST /gsma/rsp2/asn1
     * on the device listener. eim_id names it to the eUICCs (default
     * "esim-mdm"); packages are signed with eim_key_path (PEM, ECDSA
     * P-256) whose certificate is eim_cert_path; eUICC certificates are
     * verified against the CI certificate(s) in euicc_ci_path. Without a
     * key the endpoint answers 503 (the IoT API still registers devices
     * and queues packages). */
    const char *eim_id;
    const char *eim_key_path;
    const char *eim_cert_path;
    const char *euicc_ci_path;
    /* The indirect download: the eIM relays the IPA's SGP.22 mutual
     * authentication to the SM-DP+ named in it over ES9+ (HTTPS), trusting
     * the CA(s) in eim_smdp_ca_path (NULL: the system's). */
    const char *eim_smdp_ca_path;

    /* Logs (above): the lowest level written (default ESIM_LOG_OFF), JSON
     * instead of logfmt, the descriptor (0 = standard error), and an
     * access log line per request at info (method, path without the query,
     * status, peer, the API key's name or the device's UDID). Refused
     * authentications and identity mismatches are warnings, at most 10
     * lines per 10 s of each kind (then a count of those left out); APNs
     * and webhook failures are logged when they start and when they stop. */
    esim_log_level log_level;
    bool log_json;
    int log_fd;
    bool access_log;
} esim_service_config;

ESIM_EXTERN void esim_service_config_init(esim_service_config *cfg);

/*
 * Opens the store, loads certificates and binds the listener, all now, in
 * |base| (not owned; it must outlive the service). Requests are served once
 * the caller runs the loop. On success *out owns the service
 * (esim_service_free). Otherwise *out is NULL and:
 *   ESIM_EINVAL    a bad setting (listen address, TLS half-configured, mtls
 *                  without TLS, no device CA while auth is not none, bad
 *                  webhook URL, unknown store scheme); |err| names it.
 *   ESIM_ENOTFOUND a certificate, key or CA file is missing.
 *   ESIM_ECRYPTO   a certificate or key is unusable.
 *   ESIM_ESTORE    the store cannot be opened or migrated.
 *   ESIM_EIO       the port cannot be bound, or the data dir made.
 *   ESIM_ENOMEM    out of memory.
 */
ESIM_EXTERN esim_err esim_service_new(struct event_base *base, const esim_service_config *cfg,
                                      esim_service **out, esim_error *err);

/* Stops listening, cancels pending pushes and webhooks, closes the store
 * and frees the service. NULL ok. Not from inside one of its callbacks. */
ESIM_EXTERN void esim_service_free(esim_service *svc);

/* The port actually bound (useful with port 0). */
ESIM_EXTERN int esim_service_port(const esim_service *svc);

/* "http://127.0.0.1:PORT" or "https://..." as clients should use it. Owned
 * by the service. */
ESIM_EXTERN const char *esim_service_url(const esim_service *svc);

/* Asks the loop running the service to return (event_base_loopexit). Safe
 * from another thread and from a signal handler. */
ESIM_EXTERN void esim_service_request_stop(esim_service *svc);

/* The store, for modules built on the service (campaigns). Owned by it. */
ESIM_EXTERN store *esim_service_store(esim_service *svc);

/* The event loop the service runs on (the |base| given to esim_service_new),
 * for modules that need timers of their own. Not owned by the service. */
ESIM_EXTERN struct event_base *esim_service_base(esim_service *svc);

/* Counts one failure of a module's own storage under
 * esim_mdm_store_errors_total (the module records the details itself). */
ESIM_EXTERN void esim_service_count_store_error(esim_service *svc);

/* ---- extension points -------------------------------------------------------
 * The service knows nothing of the modules built on it (campaigns, in
 * campaign/). A module registers hooks after esim_service_new and before the
 * loop runs, and the program that builds the service (its composition root:
 * `esim-mdm serve`, the test harnesses) attaches the modules it wants. Every
 * hook runs on the service's loop. */

/* One item of a Windows device's answer to a SyncML command: the Status of
 * one command (or of one command inside an Atomic), or the Results of a Get. */
typedef struct {
    const char *cmd_ref; /* the CmdID answered: the command UUID, or UUID.N inside it */
    const char *cmd;     /* "Add", "Replace", "Get", "Exec", "Delete", "Atomic" */
    const char *target;  /* the item's LocURI ("" when unknown) */
    int code;            /* the SyncML status code: 200, 202, 404, 405, 500, 507... */
    const char *hresult; /* msft:originalerror ("0x86000002"), "" when none */
    const char *data;    /* a Get's Results data; NULL when none */
} esim_syncml_status;

/* The name of a code of the eUICCs CSP's ErrorDetail node, as a Windows
 * device reads it after a failed download ("InvalidMatchingId",
 * "ProfileNotReleasedByOperator"); "Unknown" for a code the CSP does not
 * define. A static string. */
ESIM_EXTERN const char *esim_windows_error_detail_name(long code);

/* What a result hook sees. Pointers are valid during the call only. */
typedef struct {
    const char *udid;
    const char *command_uuid;
    const char *status;  /* "Acknowledged", "Error", "CommandFormatError", "NotNow" */
    const esim_msg *msg; /* Apple: the parsed message (QueryResponses in msg->root); else NULL */
    /* "apple", or "windows": then |msg| is NULL and the answer is the
     * |n_syncml| items of |syncml| (Acknowledged when every code is 2xx). */
    const char *platform;
    const esim_syncml_status *syncml;
    size_t n_syncml;
    /* The device's answer to this result is still held, with no command in
     * it: a command queued for this device from this hook or from a
     * results-done hook (below) of the same batch goes out in that answer,
     * on the connection the device is waiting on, so it needs no push.
     * False when the answer went already (or carries a command): then a
     * command queued now needs a push to reach the device. */
    bool answer_held;
    /* "iot": the package's result in words, as JSON text ({"kind", "state",
     * "results": [{"op", "code", "words"...}], "profiles": [...]...}:
     * docs/iot.md); NULL for other platforms. */
    const char *iot_result;
} esim_service_result;

/* Called on the service's loop after the result's transaction (its batch)
 * committed, for results applied to their queue entry (never for Idle,
 * never for anomalies). The hook may queue (esim_service_enqueue_on in a
 * store job), push (esim_service_push_to from that job's done) and use the
 * store; it must not free the service. */
typedef void (*esim_service_result_hook)(esim_service *svc, const esim_service_result *r,
                                         void *arg);
/* Called once after the result hooks of one committed batch have all run
 * (only when there was at least one result), before the held answers are
 * completed with the devices' next commands: a module that gathers what
 * its result hooks decided queues it here (esim_service_enqueue_on), in as few
 * store operations as it likes, and it still rides in those answers. */
typedef void (*esim_service_results_done_fn)(esim_service *svc, void *arg);
/* Called every tick_ms with the wall-clock time. */
typedef void (*esim_service_tick_fn)(esim_service *svc, int64_t now_ms, void *arg);
/* Appends Prometheus text lines to |out| when /metrics is read. */
typedef void (*esim_service_metrics_fn)(esim_service *svc, esim_buf *out, void *arg);
/* Called once from esim_service_free, after the service stopped serving
 * (listener and connections closed, pending group commit undone) and
 * before pushes, webhooks and the store close: the module may still
 * enqueue and push (each then commits on its own), and must release
 * whatever |arg| holds. Modules close in the reverse order of
 * registration. */
typedef void (*esim_service_close_fn)(esim_service *svc, void *arg);

/* A notification from an instance sharing the store (this one included):
 * |topic| and |payload| as given to esim_service_notify. Called with both
 * NULL after the listener was lost and is back: notifications sent
 * meanwhile are gone, so the module catches up from the store. */
typedef void (*esim_service_notify_fn)(esim_service *svc, const char *topic, const char *payload,
                                       void *arg);

/* Registers a hook (at most 16 of each kind); call before the loop runs.
 *   ESIM_EINVAL  NULL service or function;  ESIM_ETOOBIG  16 already. */
ESIM_EXTERN esim_err esim_service_add_result_hook(esim_service *svc, esim_service_result_hook fn,
                                                  void *arg);
ESIM_EXTERN esim_err esim_service_add_tick(esim_service *svc, esim_service_tick_fn fn, void *arg);
ESIM_EXTERN esim_err esim_service_add_metrics(esim_service *svc, esim_service_metrics_fn fn,
                                              void *arg);
ESIM_EXTERN esim_err esim_service_add_close(esim_service *svc, esim_service_close_fn fn, void *arg);
ESIM_EXTERN esim_err esim_service_add_notify_hook(esim_service *svc, esim_service_notify_fn fn,
                                                  void *arg);

/* ---- several instances on one store ----
 * Instances sharing a PostgreSQL store (ESIM_STORE_FEATURE_SHARED) tell
 * each other of work through it (LISTEN/NOTIFY, on a connection of its own
 * watched by the loop); on a store of one instance nothing is sent. */

/* This instance's name among those sharing the store: host, process and a
 * random part, fresh at every start (the owner of its leases). */
ESIM_EXTERN const char *esim_service_instance_id(const esim_service *svc);
/* Sends |topic| (1 to 63 of [a-z_]) and |payload| (may be NULL, up to 7000
 * bytes) to every instance's notify hooks, this one's included; inside an
 * open unit of the store it goes when the unit commits. As
 * esim_store_notify. */
ESIM_EXTERN esim_err esim_service_notify(esim_service *svc, const char *topic, const char *payload,
                                         esim_error *err);
ESIM_EXTERN esim_err esim_service_add_results_done(esim_service *svc,
                                                   esim_service_results_done_fn fn, void *arg);

/* ---- a module's store work off the loop ----------------------------------------------
 * With PostgreSQL and a store pool, a statement may wait (a row another
 * transaction holds, a slow disk); on the loop it would hold every device.
 * A module runs such work as a store job: |run| on a pool worker with that
 * worker's own connection, then |done| on the loop. Without a pool (SQLite,
 * --store-pool 0) both run at once on the loop, with the service's store,
 * before esim_service_store_job returns. */

/* |run(st, arg)| may use |st| and |arg| only: nothing of the service and
 * nothing the loop touches. |done(svc, arg, ran)| follows on the loop, in
 * the order the jobs finished; |ran| false: the service stopped before a
 * worker took the job, and nothing of it was done. Jobs of modules take at
 * most half the workers at once, as the admin API's do.
 *   ESIM_EINVAL  NULL service or function;  ESIM_ENOMEM  (nothing runs). */
ESIM_EXTERN esim_err esim_service_store_job(esim_service *svc, void (*run)(store *st, void *arg),
                                            void (*done)(esim_service *svc, void *arg, bool ran),
                                            void *arg);
/* Whether esim_service_store_job runs jobs off the loop (a store pool). */
ESIM_EXTERN bool esim_service_store_jobs_async(const esim_service *svc);

/* The held answers of the batch whose results-done hooks are running (the
 * devices that wait for their next command on the connection they sent the
 * result on), kept out of that batch's replies until each hold taken is
 * released: a module whose queueing runs as a store job takes a hold there
 * and releases it from the job's |done|, after esim_service_enqueued; the
 * commands queued still go in those answers. NULL (nothing to wait for)
 * outside a results-done hook, when no answer is held, or without a store
 * pool. A hold must be released, once. */
typedef struct esim_answer_hold esim_answer_hold;
ESIM_EXTERN esim_answer_hold *esim_service_answers_hold(esim_service *svc);
ESIM_EXTERN void esim_service_answers_release(esim_service *svc, esim_answer_hold *h);

/* ---- admin API routes of modules ---------------------------------------------------
 * A module adds endpoints to the admin API. They answer after the service's
 * own routes are tried, and always require the API token. */

/* One admin API request, as a route handler sees it; valid during the call. */
typedef struct esim_api_request esim_api_request;

/* Answers |r| (every path through a handler must answer exactly once). */
typedef void (*esim_api_handler)(esim_api_request *r, void *arg);

/*
 * Adds the route |method| ("GET", "POST", "PUT", "DELETE") |pattern|
 * ("/v1/campaigns/:/pause": each ':' segment matches one path segment,
 * decoded, at most 4) with |fn|(r, |arg|). The pattern is copied.
 *   ESIM_EINVAL  NULL argument, unknown method, a pattern not starting
 *                with '/', or more than 4 ':' segments;
 *   ESIM_EEXIST  the method and pattern are routed already;
 *   ESIM_ENOMEM  out of memory.
 */
ESIM_EXTERN esim_err esim_service_add_route(esim_service *svc, const char *method,
                                            const char *pattern, esim_api_handler fn, void *arg);

/*
 * As esim_service_add_route, for a handler whose only work besides the
 * request is the store: with a store pool (PostgreSQL: docs/architecture.md,
 * "PostgreSQL on the event loop") it runs on a pool worker with that
 * worker's own connection, so a slow or blocked statement holds a worker,
 * not the event loop and the other devices' check-ins. Such a handler reads
 * only the request (esim_api_param, esim_api_query, esim_api_body,
 * esim_api_body_json, esim_api_header, esim_api_caller), reaches the store
 * through esim_api_store(r) only, answers with esim_api_reply,
 * esim_api_reply_json or esim_api_error (esim_api_add_header with static
 * strings), and touches nothing else of the service or of memory the loop
 * uses; the answer and the audit entry go out on the loop. Without a pool
 * (SQLite) it runs on the loop like any route. Same errors.
 */
ESIM_EXTERN esim_err esim_service_add_store_route(esim_service *svc, const char *method,
                                                  const char *pattern, esim_api_handler fn,
                                                  void *arg);

/*
 * The admin API's access check, for anything that serves people on the
 * service's behalf (the dashboard) with the same keys and roles: who holds
 * |token| (the key itself, not the header), and whether that key may do
 * |method| on |path| (esim_api_role_needed). |peer| is the client's IP
 * address as text (NULL unknown): failures are counted per address, and an
 * address locked out gets ESIM_ACCESS_THROTTLED whatever it sends.
 * |name| (64 bytes, may be NULL) gets the key's name, *role (may be NULL)
 * its role, *retry_after_s (may be NULL) the seconds left of a lockout.
 */
typedef enum {
    ESIM_ACCESS_OK = 0,
    ESIM_ACCESS_NO_KEY,    /* no key or an unknown one: 401 */
    ESIM_ACCESS_FORBIDDEN, /* the key's role is below the one needed: 403 */
    ESIM_ACCESS_THROTTLED, /* too many failures from |peer|: 429 */
} esim_access;
ESIM_EXTERN esim_access esim_service_check_access(esim_service *svc, const char *token,
                                                  const char *peer, const char *method,
                                                  const char *path, char name[64], esim_role *role,
                                                  int *retry_after_s);

/* Replaces the service's API keys (the api_token and api_keys settings) at
 * run time, as SIGHUP does; requests already admitted keep their caller.
 *   ESIM_EINVAL  a key without name or token, a role out of range, a name
 *                or token twice;  ESIM_ENOMEM. The old keys stay then. */
ESIM_EXTERN esim_err esim_service_set_api_keys(esim_service *svc, const char *api_token,
                                               const esim_api_key *keys, size_t n, esim_error *err);

/* As esim_service_add_route, but the service asks for no API token: the
 * handler decides who may see what (the dashboard's pages and log-in).
 * Same errors. */
ESIM_EXTERN esim_err esim_service_add_public_route(esim_service *svc, const char *method,
                                                   const char *pattern, esim_api_handler fn,
                                                   void *arg);

/* A second way into the admin API, for requests with no Authorization
 * header: a browser's session (the dashboard). |fn| returns the role of
 * the key that opened the request's session and puts that key's name in
 * |name| (64 bytes), or returns ESIM_ROLE_NONE (then 401); it must refuse
 * a request that changes something (any method but GET and HEAD) without
 * the session's CSRF token. The service then applies the role as for the
 * key itself (esim_api_role_needed, the audit log). One per service; NULL
 * |fn| removes it.  ESIM_EINVAL  NULL service. */
typedef esim_role (*esim_api_session_fn)(esim_api_request *r, void *arg, char name[64]);
ESIM_EXTERN esim_err esim_service_set_session_auth(esim_service *svc, esim_api_session_fn fn,
                                                   void *arg);

/*
 * Applies |cfg| to the running service, as `esim-mdm serve` does on SIGHUP,
 * without dropping a connection: the API keys (api_token, api_keys), the TLS
 * certificate and key (for new connections), the device CA, the device
 * limits (max_body, max_depth, device_rate and burst, not_now_backoff_ms,
 * replay_window_ms, require_signing_time) and the log settings. Everything
 * is loaded and checked first: on any error nothing changes and the old
 * settings stay (ESIM_EINVAL, ESIM_ENOTFOUND, ESIM_ECRYPTO as
 * esim_service_new). Settings only a restart changes (listen, data_dir,
 * store, store_sync, device_auth, TLS on or off, APNs, webhooks, connection
 * limits) keep their running values; |restart| (may be NULL) gets their
 * names, comma-separated ("" when none), and the log says so.
 */
ESIM_EXTERN esim_err esim_service_reload(esim_service *svc, const esim_service_config *cfg,
                                         char *restart, size_t restart_len, esim_error *err);

/* Undoes every registration (hooks, ticks, metrics, close, routes) made
 * with |arg|: for a module that failed half-way through attaching. */
ESIM_EXTERN void esim_service_remove_hooks(esim_service *svc, void *arg);

/* Keeps |r| open after its handler returns, for an answer that waits on
 * a store job (esim_service_store_job): the handler returns without
 * answering, and the module answers |r| once, on the loop (from the job's
 * |done|), with esim_api_reply, esim_api_reply_json or esim_api_error;
 * the audit entry follows that answer. Until then |r| stays valid and
 * esim_api_param, esim_api_query, esim_api_header and esim_api_caller may
 * still be read. Answering before the handler returns is allowed (a job
 * that ran at once, without a pool). Only for routes added with
 * esim_service_add_route (not on a pool worker). Every |done| must answer,
 * |ran| false included: the service answers nothing deferred itself. */
ESIM_EXTERN void esim_api_defer(esim_api_request *r);

/* The service a request came to. */
ESIM_EXTERN esim_service *esim_api_service(esim_api_request *r);
/* The store a handler uses: a pool worker's on a store route running there
 * (esim_service_add_store_route), else the service's (esim_service_store). */
ESIM_EXTERN store *esim_api_store(esim_api_request *r);
/* The name and role of the API key the request came with. */
ESIM_EXTERN const char *esim_api_caller(const esim_api_request *r);
ESIM_EXTERN esim_role esim_api_caller_role(const esim_api_request *r);
/* The |i|th ':' segment of the route's pattern, decoded; NULL past the end. */
ESIM_EXTERN const char *esim_api_param(const esim_api_request *r, size_t i);
/* A query-string parameter, decoded; NULL when absent. */
ESIM_EXTERN const char *esim_api_query(const esim_api_request *r, const char *key);
/* The request body as one block (NULL when empty); *len its size. */
ESIM_EXTERN const unsigned char *esim_api_body(esim_api_request *r, size_t *len);

/* The request's method ("GET", "POST", "PUT", "DELETE", "HEAD", "OTHER"). */
ESIM_EXTERN const char *esim_api_method(const esim_api_request *r);
/* The client's IP address as text ("" unknown), in |out|, which is returned. */
ESIM_EXTERN const char *esim_api_peer(const esim_api_request *r, char out[48]);
/* The request's path, undecoded, without the query. */
ESIM_EXTERN const char *esim_api_path(const esim_api_request *r);
/* A request header (first of that name), NULL when absent. */
ESIM_EXTERN const char *esim_api_header(const esim_api_request *r, const char *name);
/* Adds a header to the answer; call before replying. */
ESIM_EXTERN void esim_api_add_header(esim_api_request *r, const char *name, const char *value);
/* Answers |code| with |len| bytes of |body| (may be NULL) as |content_type|
 * (NULL: none). */
ESIM_EXTERN void esim_api_reply(esim_api_request *r, int code, const char *content_type,
                                const void *body, size_t len);
/* The role the request was admitted with (NONE on public routes). */
ESIM_EXTERN esim_role esim_api_caller_role(const esim_api_request *r);

/* jansson's json_t, without making every user of this header include it. */
struct json_t;
/* The body parsed as a JSON object (caller's: json_decref); on failure the
 * request is answered 400 and NULL is returned. */
ESIM_EXTERN struct json_t *esim_api_body_json(esim_api_request *r);
/* Answers |code| with |body| as JSON (stolen; NULL answers 500). */
ESIM_EXTERN void esim_api_reply_json(esim_api_request *r, int code, struct json_t *body);
/* Answers {"error": {"status", "field" (when not NULL), "message"}}. */
ESIM_EXTERN void esim_api_error(esim_api_request *r, int code, const char *field, const char *fmt,
                                ...) __attribute__((format(printf, 4, 5)));
/* The HTTP status the admin API gives an esim_err (ESIM_ENOTFOUND 404,
 * ESIM_ESTORE 503 with Retry-After, ...). */
ESIM_EXTERN int esim_api_status_for(esim_err rc);

/* ---- enqueue and push, as the admin API does them ------------------------------ */

typedef struct {
    int priority;       /* higher first; default 0 */
    int64_t expires_at; /* wall-clock ms; 0 = never */
    bool push;          /* wake each device once after enqueueing */
} esim_enqueue_opts;

/* What happened to one device's push. */
typedef enum {
    ESIM_PUSH_SENT = 0, /* handed to the APNs client */
    ESIM_PUSH_PENDING,  /* no APNs configured (or an IoT eUICC, which polls): the device gets it at
                           its next check-in */
    ESIM_PUSH_NO_TOKEN, /* the device has not sent TokenUpdate */
    ESIM_PUSH_DEAD_TOKEN, /* APNs said the token is dead: wait for a TokenUpdate */
    ESIM_PUSH_FAILED,     /* the APNs client refused it (credential stopped, full) */
    ESIM_PUSH_SKIPPED,    /* push was not asked for */
} esim_push_state;
ESIM_EXTERN const char *esim_push_state_name(esim_push_state s); /* "sent", "pending", ... */

/*
 * Queueing commands, in two halves so that the store's half runs in a store
 * job (esim_service_store_job: on a pool worker with PostgreSQL, never
 * holding the loop) and the service's half on the loop once it committed.
 *
 * esim_service_enqueue_on: queues |command_plist| (a whole command, as
 * esim_cmd_parse reads it) for the |n| devices on |st|, all or nothing.
 * esim_service_enqueue_syncml_on: queues a Windows command for the |n|
 * devices (each must be a Windows device): |syncml| is the SyncBody
 * fragment the device gets (Add, Replace, Get, Exec, Delete or Atomic
 * elements whose CmdIDs are |uuid| (NULL: a fresh one) or "UUID.N" inside
 * it; paths under ./Device/Vendor/MSFT/eUICCs/{EID}/ name the eUICC by EID
 * and are rewritten to the node the device reports); |request_type| names
 * it in the API ("eUICCs.AddProfile", ...).
 * esim_service_enqueue_iot_on: queues one eIM package for the |n|
 * registered IoT eUICCs |eids|, all or nothing; |package_json| describes it
 * (docs/iot.md, "Packages": {"operations": [...]}, {"download":
 * {"activation_code": ...}} or {"euicc_data": true}); each eUICC gets it at
 * its next poll.
 * Each does the checks and the queueing on |st| (the service's store, or a
 * store job's), and nothing else: no push, no count, nothing of the
 * service's memory touched (safe in a store job's |run|). Once what they
 * queued is committed, esim_service_enqueued, on the loop, does the rest,
 * and the pushes are the caller's (esim_service_push_to, with the targets
 * read in the same job).
 *   ESIM_EINVAL     not a command plist (or SyncML fragment, or package
 *                   description: |err| says why), no devices, a device
 *                   twice, a device of another platform;
 *   ESIM_ENOTFOUND  a device is unknown (an EID not registered);
 *   ESIM_ESTATE     one checked out;
 *   ESIM_EEXIST     the CommandUUID was used before;
 *   ESIM_ETOOBIG    the plist is over max_body or nested deeper than max_depth;
 *   ESIM_ESTORE     the store failed.  |err| (may be NULL) names the problem.
 * (The one-call forms that queued and pushed on the service's own store,
 * on the loop, are gone: no module used them, and on PostgreSQL a slow
 * statement there held every device.) */
ESIM_EXTERN esim_err esim_service_enqueue_on(const esim_service *svc, store *st,
                                             const void *command_plist, size_t len,
                                             const char *const *udids, size_t n,
                                             const esim_enqueue_opts *opts, esim_error *err);
ESIM_EXTERN esim_err esim_service_enqueue_syncml_on(const esim_service *svc, store *st,
                                                    const char *uuid, const char *request_type,
                                                    const char *syncml, size_t len,
                                                    const char *const *udids, size_t n,
                                                    const esim_enqueue_opts *opts, esim_error *err);
ESIM_EXTERN esim_err esim_service_enqueue_iot_on(const esim_service *svc, store *st,
                                                 const char *uuid, const char *package_json,
                                                 const char *const *eids, size_t n,
                                                 const esim_enqueue_opts *opts, esim_error *err);
/* A command queued with an esim_service_enqueue*_on for |udids| is
 * committed: counted, and put in a held answer of one of those devices
 * (esim_service_answers_hold). Pushes are the caller's. */
ESIM_EXTERN void esim_service_enqueued(esim_service *svc, const char *const *udids, size_t n);

/* Pushes one device now, its push facts read on the service's own store
 * on the loop: with PostgreSQL a slow statement there holds every device,
 * so it is for callers where that is harmless (start-up, shutdown, tests,
 * SQLite). On a device's or a request's path read the facts in the
 * caller's store job (esim_store_push_target on the job's store, as
 * esim_service_store_job's |run|) and push from its |done| with
 * esim_service_push_to. *state (may be NULL) says what happened (a device
 * without a token is not an error: ESIM_PUSH_NO_TOKEN).
 *   ESIM_ENOTFOUND  unknown device;  ESIM_ESTORE  the store failed. */
ESIM_EXTERN esim_err esim_service_push(esim_service *svc, const char *udid, esim_push_state *state,
                                       esim_error *err);
/* Pushes one device whose target |t| was read with esim_store_push_target
 * (on a store job's store, say): esim_service_push without its store read.
 * |err| (may be NULL) says why when *state is ESIM_PUSH_FAILED. */
ESIM_EXTERN void esim_service_push_to(esim_service *svc, const store_push_target *t,
                                      esim_push_state *state, esim_error *err);

#ifdef __cplusplus
}
#endif
#endif
