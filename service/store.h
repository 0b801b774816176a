/*
 * store.h — where the MDM service keeps devices, commands, per-device queues
 * and the append-only event ledger. Callers use the esim_store_* functions
 * below; the back ends ("sqlite" in store_sqlite.c, "pgsql" in store_pgsql.c) sit
 * behind a private table of small operations (store_internal.h), the way
 * curl hides its TLS back ends. The rules of the domain (identity binding,
 * re-enrolment after an erase, what each Status does, what is an anomaly)
 * live once in store.c, above the back ends: a back end stores and fetches.
 *
 * Rules every back end honours (DESIGN.md, "Store"):
 *  - Each operation below is ONE transaction: it either happens whole or not
 *    at all, whatever process dies when. An operation that refuses its input
 *    changes nothing.
 *  - Nothing back-end specific crosses this interface: no SQL, no handles,
 *    no rowids. Orders are explicit (priority, then enqueue order).
 *  - Strings handed in are borrowed for the call; everything handed out is
 *    either copied into fixed fields or owned by the caller as documented.
 *  - Times are wall-clock milliseconds since the Unix epoch (esim_now_ms()).
 *
 * A queue entry (one command for one device) moves through these states:
 *   queued -> pushed -> sent -> acknowledged | error | format_error
 *   not_now   (the device said NotNow: still deliverable, counted)
 *   expired   (its command's expiry passed before a final answer)
 *   canceled  (an admin canceled it, or the device checked out)
 * "Active" states are queued, pushed, sent and not_now: those are delivered.
 * The final states never change again, so an acknowledged command is never
 * delivered as new.
 */
#ifndef ESIM_SERVICE_STORE_H
#define ESIM_SERVICE_STORE_H

#include "core/esim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An open store; opaque (esim_store_open, esim_store_close). */
typedef struct store store;

/* ---- records ----------------------------------------------------------- */

typedef enum {
    STORE_Q_QUEUED = 0,
    STORE_Q_PUSHED,
    STORE_Q_SENT,
    STORE_Q_ACKNOWLEDGED,
    STORE_Q_ERROR,
    STORE_Q_FORMAT_ERROR,
    STORE_Q_NOT_NOW,
    STORE_Q_EXPIRED,
    STORE_Q_CANCELED,
} store_qstate;

/* "queued", "pushed", ... as the API shows them; NULL when out of range. */
ESIM_EXTERN const char *esim_store_qstate_name(store_qstate s);
/* The reverse; ESIM_EINVAL for an unknown name. */
ESIM_EXTERN esim_err esim_store_qstate_from_name(const char *name, store_qstate *out);
/* True for queued, pushed, sent and not_now. */
ESIM_EXTERN bool esim_store_qstate_active(store_qstate s);

/* Push reachability of a device. */
typedef enum {
    STORE_PUSH_NONE = 0, /* no token yet (or cleared by a new Authenticate) */
    STORE_PUSH_VALID,    /* token from TokenUpdate, not refused by APNs */
    STORE_PUSH_DEAD,     /* APNs said the token is dead: wait for TokenUpdate */
} store_push_state;
/* "none", "valid", "dead" */
ESIM_EXTERN const char *esim_store_push_state_name(store_push_state s);

/* The longest push address kept: an APNs token in hex, or a WNS ChannelURI. */
#define STORE_PUSH_TOKEN_MAX 1024

typedef struct {
    char udid[65];
    bool is_enrollment_id; /* the device identified itself by EnrollmentID */
    bool enrolled;         /* Authenticate seen and no CheckOut since */
    char topic[256];
    char serial_number[64];
    char os_version[32], build_version[32], product_name[64], model[64];
    char device_name[256];
    char imei[32];
    char eid[ESIM_EID_LEN + 1]; /* empty until a ServiceSubscriptions answer names it */
    char cert_sha256[65];       /* identity certificate bound at Authenticate; may be empty */
    /* Apple: the APNs token in hex; Windows: the WNS ChannelURI the device
     * reported in DMClient. Empty when none. */
    char push_token[STORE_PUSH_TOKEN_MAX];
    char push_magic[128];
    store_push_state push_state;
    int64_t enrolled_at, checked_out_at, token_updated_at, last_seen_at;
    int64_t push_due_at; /* a re-push is owed at this time (NotNow back-off); 0 = none */
    /* TokenUpdates since the current enrolment began (NanoMDM's
     * token_update_tally): 1 after the enrolment's own, more after later
     * ones; 0 again after Authenticate or CheckOut. */
    int token_update_tally;
    char platform[16]; /* "apple" (every device enrolled by check-in) or "windows" (OMA-DM) */
} store_device;

typedef struct {
    char uuid[128];
    char request_type[64];
    int priority; /* higher first */
    int64_t created_at;
    int64_t expires_at;                      /* 0 = never */
    uint64_t devices;                        /* devices it was queued for */
    uint64_t by_state[STORE_Q_CANCELED + 1]; /* how many of them in each state */
} store_command_info;

typedef struct {
    char udid[65];
    char command_uuid[128];
    char request_type[64];
    store_qstate state;
    int priority;
    int attempts;      /* how many times it was sent */
    int not_now_count; /* how many NotNow answers */
    int64_t enqueued_at, pushed_at, sent_at, answered_at, updated_at;
    int64_t expires_at;
    char *error_chain_json; /* malloc'd JSON array or NULL */
    esim_buf result;        /* the device's whole last answer (raw plist), may be empty */
} store_queue_entry;

/* Frees the owned parts of |n| entries and the array itself (NULL ok). */
ESIM_EXTERN void esim_store_queue_entries_free(store_queue_entry *entries, size_t n);

/* ---- inputs and outputs of the operations -------------------------------- */

/* Authenticate: what the device said about itself. */
typedef struct {
    const char *udid; /* required */
    bool is_enrollment_id;
    const char *topic;       /* required */
    const char *cert_sha256; /* identity certificate; NULL/"" when device auth is off */
    int64_t cert_not_before; /* its notBefore, ms since the epoch; 0 = unknown */
    const char *serial_number, *os_version, *build_version, *product_name, *model;
    const char *device_name, *imei; /* each may be NULL or "" */
    const char *platform;           /* "apple" when NULL or ""; "windows" for OMA-DM clients */
} store_authenticate_in;

/* The next command chosen for a device. */
typedef struct {
    bool present;
    char command_uuid[128];
    char request_type[64];
    esim_buf body; /* the command plist, owned: esim_buf_free() */
} store_next_command;

typedef enum {
    STORE_RESULT_NONE = 0, /* Idle: nothing to record */
    STORE_RESULT_APPLIED,  /* the answer was recorded against its queue entry */
    STORE_RESULT_ANOMALY,  /* the command was not outstanding for this device: logged only */
} store_result_outcome;

/* One device request on the command endpoint: record its answer (if any)
 * and choose the next command, atomically. */
typedef struct {
    const char *udid;         /* required */
    const char *cert_sha256;  /* NULL/"" when device auth is off */
    const char *status;       /* "Idle", "Acknowledged", "Error", "CommandFormatError", "NotNow" */
    const char *command_uuid; /* required unless Idle */
    const void *raw;          /* the whole request body, recorded with the answer */
    size_t raw_len;
    const char *error_chain_json; /* JSON array or NULL */
    const char *eid;              /* an EID learned from this answer, or NULL */
    /* Commands not to deliver on this connection (NotNow'd on it), borrowed. */
    const char *const *skip_uuids;
    size_t n_skip;
    int64_t not_now_backoff_ms; /* when NotNow: owe the device a push this much later */
    bool hold_next;             /* record the answer but hand out no command (a replay) */
} store_exchange_in;

typedef struct {
    store_result_outcome outcome;
    char anomaly[160];       /* why, when outcome == STORE_RESULT_ANOMALY */
    store_next_command next; /* marked sent (attempts + 1) when present */
} store_exchange_out;

/* A command to put on devices' queues. */
typedef struct {
    const char *uuid;         /* required, unique */
    const char *request_type; /* required */
    const void *body;         /* the command plist */
    size_t body_len;
    int priority;
    int64_t expires_at; /* 0 = never */
} store_command_in;

typedef struct {
    uint64_t devices, enrolled, reachable; /* reachable: enrolled with a valid token */
    uint64_t queue_by_state[STORE_Q_CANCELED + 1];
    uint64_t events;
} store_stats;

/* One entry of the append-only ledger. */
typedef struct {
    int64_t id; /* increasing; page with it */
    int64_t at;
    char kind[32]; /* authenticate, token_update, checkout, enqueued, sent, result,
                      anomaly, canceled, expired, pushed, push_failed, ... */
    char udid[65];
    char command_uuid[128];
    char detail[512];
    esim_buf raw; /* the device's body for anomalies; may be empty */
} store_event;

/* Frees the owned parts of |n| events and the array itself (NULL ok). */
ESIM_EXTERN void esim_store_events_free(store_event *events, size_t n);

/* The push facts of one device, for the push path. */
typedef struct {
    char udid[65];
    char topic[256];
    char push_token[STORE_PUSH_TOKEN_MAX]; /* APNs token (hex) or WNS ChannelURI */
    char push_magic[128];
    store_push_state push_state;
    bool enrolled;
    char platform[16]; /* as store_device.platform */
} store_push_target;

/* ---- opening ----------------------------------------------------------------- */

/* When commits become durable (docs/service.md, "Durability"). */
typedef enum {
    /* Default. A commit returns before it is durable; the caller makes every
     * commit so far durable at once with esim_store_sync() before it tells
     * anyone about them (group commit). */
    STORE_SYNC_GROUP = 0,
    /* Every commit is durable before it returns. */
    STORE_SYNC_FULL,
    /* Commits survive a crash of this process, not a power cut. */
    STORE_SYNC_NORMAL,
} store_sync;

typedef struct {
    store_sync sync;
} store_options;

/*
 * Opens the store named by |spec|: "sqlite:PATH", a bare path (SQLite),
 * NULL/"" for "<data_dir>/esim-mdm.db", or a libpq URI "postgres://..." /
 * "postgresql://..." (PostgreSQL; host, user, database, service=NAME and the
 * PG* environment variables as libpq reads them; the store lives in the
 * first schema of search_path, made when missing). The schema is created or
 * migrated to the current version. On success *out is the caller's
 * (esim_store_close).
 *   ESIM_EINVAL     an unknown scheme;
 *   ESIM_ESTORE     cannot open, or the schema is newer than this program;
 *   ESIM_EIO        the data directory cannot be made.
 */
ESIM_EXTERN esim_err esim_store_open(const char *spec, const char *data_dir,
                                     const store_options *opts, store **out, esim_error *err);
ESIM_EXTERN void esim_store_close(store *st); /* NULL ok */

/* The current schema version this program writes. */
ESIM_EXTERN int esim_store_schema_version(void);

/* The back end's name: "sqlite" or "pgsql". */
ESIM_EXTERN const char *esim_store_backend(const store *st);

/* The words of the store's last failure on its own connection ("" when
 * none yet), e.g. "store (sqlite): COMMIT: database is locked": what the
 * service logs when an operation failed with no esim_error to fill. */
ESIM_EXTERN const char *esim_store_last_error(const store *st);

/* What a back end can do beyond the operations every back end has. */
enum {
    /* esim_store_batch_begin/commit/rollback group many operations into one
     * commit. Without it they do nothing and every operation commits on its
     * own. */
    ESIM_STORE_FEATURE_BATCH = 1u << 0,
    /* Commits can be made durable later, many at once (esim_store_sync).
     * Without it a commit is as durable as it will get when it returns, and
     * esim_store_sync does nothing. */
    ESIM_STORE_FEATURE_DEFERRED_SYNC = 1u << 1,
    /* Several service instances may share the store (PostgreSQL): leases
     * are real (esim_store_lease), and notifications reach every instance
     * (esim_store_notify, esim_store_listen). Without it the one process
     * holds every lease, and there is nobody to notify. */
    ESIM_STORE_FEATURE_SHARED = 1u << 2,
};
/* The ESIM_STORE_FEATURE_* bits of this store. */
ESIM_EXTERN unsigned esim_store_features(const store *st);

/* How the back end's connection to its database fares, for /metrics. */
typedef struct {
    uint64_t connections;        /* open and usable now (SQLite: its one handle) */
    uint64_t queries;            /* statements sent (0 for SQLite: no round trips) */
    uint64_t failures;           /* statements that failed */
    uint64_t reconnects;         /* connections remade after one was lost */
    uint64_t commits;            /* transactions committed */
    uint64_t rollbacks;          /* transactions undone */
    uint64_t statement_timeouts; /* statements cancelled by the back end's
                                  * time limit (PostgreSQL's statement_timeout) */
} store_backend_stats;
ESIM_EXTERN void esim_store_backend_stats(store *st, store_backend_stats *out);

/* ---- the operations -------------------------------------------------------
 * Each returns ESIM_OK or one of the codes listed; |err| (may be NULL) gets a
 * sentence naming what was wrong. ESIM_ESTORE (the back end failed: disk,
 * corruption, lock timeout) and ESIM_ENOMEM may come from any operation and
 * are not repeated below. */

/* Creates or updates the device and binds |in->cert_sha256| to it.
 *   ESIM_EINVAL  no UDID or Topic;
 *   ESIM_EAUTH   the certificate is bound to another device (one identity
 *                enrols one device), or the device is enrolled and bound to
 *                another certificate. A device re-enrolls with a new
 *                identity only after CheckOut, or once after an EraseDevice
 *                was handed to it during its current enrolment, with an
 *                identity issued after that erase (in->cert_not_before, when
 *                known, at most 2 hours earlier) and the serial number it
 *                reported before (that erase is then retired, never
 *                delivered again, and a new enrolment starts).
 * Clears the push token (a TokenUpdate follows every Authenticate), except
 * when the device is enrolled and the certificate is the one bound: then
 * the token stays until the TokenUpdate replaces it (a replayed
 * Authenticate cannot cut the device off from its pushes). */
ESIM_EXTERN esim_err esim_store_device_authenticate(store *st, const store_authenticate_in *in,
                                                    int64_t now, esim_error *err);

/* Stores the push token (hex), PushMagic and topic; the device becomes
 * reachable and its push state valid.
 *   ESIM_ENOTFOUND  never authenticated;  ESIM_ESTATE  checked out;
 *   ESIM_EAUTH      bound to another certificate;  ESIM_EINVAL  a field missing. */
ESIM_EXTERN esim_err esim_store_device_token_update(store *st, const char *udid,
                                                    const char *cert_sha256, const char *topic,
                                                    const char *token_hex, const char *push_magic,
                                                    int64_t now, esim_error *err);

/* The same, and the device's token_update_tally after it (TokenUpdates
 * since its enrolment, this one included) in |*tally| when it succeeds and
 * |tally| is not NULL: the update returns it, so the caller need not read
 * the device's row again. */
ESIM_EXTERN esim_err esim_store_device_token_update_tally(store *st, const char *udid,
                                                          const char *cert_sha256,
                                                          const char *topic, const char *token_hex,
                                                          const char *push_magic, int64_t now,
                                                          int64_t *tally, esim_error *err);

/* SetBootstrapToken: stores the device's bootstrap token, replacing any
 * earlier one (|len| 0: clears it); GetBootstrapToken: appends it to |out|
 * (nothing when the device has none). A ledger event records each, without
 * the token.
 *   ESIM_ENOTFOUND, ESIM_ESTATE, ESIM_EAUTH as for TokenUpdate. */
ESIM_EXTERN esim_err esim_store_device_bootstrap_set(store *st, const char *udid,
                                                     const char *cert_sha256, const void *token,
                                                     size_t len, int64_t now, esim_error *err);
ESIM_EXTERN esim_err esim_store_device_bootstrap_get(store *st, const char *udid,
                                                     const char *cert_sha256, esim_buf *out,
                                                     int64_t now, esim_error *err);

/* Any other check-in of an enrolled device (UserAuthenticate,
 * DeclarativeManagement, GetToken): checks its identity as for TokenUpdate,
 * marks it seen and records a ledger event |kind| with |detail| (may be
 * NULL).  ESIM_ENOTFOUND, ESIM_ESTATE, ESIM_EAUTH as for TokenUpdate. */
ESIM_EXTERN esim_err esim_store_device_checkin(store *st, const char *udid, const char *cert_sha256,
                                               const char *kind, const char *detail, int64_t now,
                                               esim_error *err);

/* Unenrolls the device: enrolled = false, token cleared, every active queue
 * entry canceled.  ESIM_ENOTFOUND, ESIM_ESTATE, ESIM_EAUTH as above. */
ESIM_EXTERN esim_err esim_store_device_checkout(store *st, const char *udid,
                                                const char *cert_sha256, int64_t now,
                                                esim_error *err);

/* Retires the device by an operator's decision (DELETE /v1/devices/{udid}):
 * every active queue entry canceled, enrolled = false, token and push magic
 * forgotten, the identity binding released (it must enroll again, with any
 * identity), a "retired" ledger event carrying |detail| (may be NULL). The
 * record and its ledger stay.  ESIM_ENOTFOUND  no such device. */
ESIM_EXTERN esim_err esim_store_device_retire(store *st, const char *udid, const char *detail,
                                              int64_t now, esim_error *err);

/* Records a command result or Idle and picks the next command (see
 * store_exchange_in). Results are applied only to an entry in state sent
 * for this device; anything else is an anomaly, logged with the raw body and
 * never applied. Status effects:
 *   Acknowledged / Error / CommandFormatError: final, with error chain and raw answer.
 *   NotNow: state not_now, not_now_count + 1, device owed a push later.
 * The next command is the active entry with the highest priority, then the
 * oldest, that is not expired and not in skip_uuids; it is marked sent and
 * its attempts counted. |out->next.body| must be empty on entry.
 *   ESIM_ENOTFOUND  unknown device;  ESIM_ESTATE  checked out;
 *   ESIM_EAUTH      bound to another certificate;  ESIM_EINVAL  bad status. */
ESIM_EXTERN esim_err esim_store_device_exchange(store *st, const store_exchange_in *in, int64_t now,
                                                store_exchange_out *out, esim_error *err);

/* Copies one device into |out|.  ESIM_ENOTFOUND. */
ESIM_EXTERN esim_err esim_store_device_get(store *st, const char *udid, store_device *out,
                                           esim_error *err);

/* What a campaign's creation reads of each device of its target: these
 * columns of its row, as esim_store_device_get gives them. */
typedef struct {
    bool enrolled;
    char serial_number[64];
    char os_version[32];
    char eid[ESIM_EID_LEN + 1];
    char platform[16];
} store_device_brief;

/* The brief of one device.  ESIM_ENOTFOUND (no such device, or |udid|
 * NULL), ESIM_ESTORE (the store failed). */
ESIM_EXTERN esim_err esim_store_device_brief(store *st, const char *udid, store_device_brief *out,
                                             esim_error *err);

/* Up to |limit| devices with udid > |after| (NULL or "" = from the start),
 * in udid order. *out is malloc'd (free()), *n its length. */
ESIM_EXTERN esim_err esim_store_device_list(store *st, const char *after, size_t limit,
                                            store_device **out, size_t *n, esim_error *err);

/* As esim_store_device_list, only the devices whose UDID, serial number,
 * device name, product name or EID contains |q| (ASCII letters in any case;
 * NULL or "" = every device). A back end without an index for it scans. */
ESIM_EXTERN esim_err esim_store_device_search(store *st, const char *q, const char *after,
                                              size_t limit, store_device **out, size_t *n,
                                              esim_error *err);

/* The fleet counted by what a dashboard shows: one row per distinct
 * (platform, product name, model, enrolled, push state, eSIM verified). */
typedef struct {
    char platform[16]; /* as store_device.platform */
    char product_name[64], model[64];
    bool enrolled;
    store_push_state push_state;
    bool verified; /* device facts: the expected eSIM was seen */
    uint64_t count;
} store_fleet_row;

/* *rows is malloc'd (free()), *n its length. */
ESIM_EXTERN esim_err esim_store_fleet_counts(store *st, store_fleet_row **rows, size_t *n,
                                             esim_error *err);

/* Puts |cmd| on the queue of each of the |n| devices (n >= 1, no
 * duplicates), all or nothing.
 *   ESIM_ENOTFOUND  a device is unknown (|err| names it);
 *   ESIM_ESTATE     a device is checked out (named);
 *   ESIM_EEXIST     the command uuid is already used;
 *   ESIM_EINVAL     empty list, a device listed twice, or a missing field. */
ESIM_EXTERN esim_err esim_store_command_enqueue(store *st, const store_command_in *cmd,
                                                const char *const *udids, size_t n, int64_t now,
                                                esim_error *err);

/* The command with its counts by state, and up to |limit| devices' entries
 * for it with udid > |after| (NULL or "" = from the start), in udid order.
 * *entries is owned by the caller (esim_store_queue_entries_free).
 *   ESIM_ENOTFOUND  no such command. */
ESIM_EXTERN esim_err esim_store_command_get(store *st, const char *uuid, const char *after,
                                            size_t limit, store_command_info *info,
                                            store_queue_entry **entries, size_t *n,
                                            esim_error *err);

/* A device's queue: its active entries in delivery order, then (when
 * |with_done|) up to 100 of the latest final ones, newest first. *entries
 * is owned by the caller (esim_store_queue_entries_free).  ESIM_ENOTFOUND. */
ESIM_EXTERN esim_err esim_store_device_queue(store *st, const char *udid, bool with_done,
                                             store_queue_entry **entries, size_t *n,
                                             esim_error *err);

/* Cancels one active entry.  ESIM_ENOTFOUND  no such entry;
 *   ESIM_ESTATE  it is already final (|err| names the state). */
ESIM_EXTERN esim_err esim_store_queue_cancel(store *st, const char *udid, const char *uuid,
                                             int64_t now, esim_error *err);

/* The push facts of a device.  ESIM_ENOTFOUND. */
ESIM_EXTERN esim_err esim_store_push_target(store *st, const char *udid, store_push_target *out,
                                            esim_error *err);

/* A push for the device was accepted by APNs: its queued and not_now entries
 * become pushed, and any owed push is cleared. When |token_dead|, the token
 * is marked dead instead (410, BadDeviceToken). */
ESIM_EXTERN esim_err esim_store_push_recorded(store *st, const char *udid, bool token_dead,
                                              int64_t now, esim_error *err);

/* The device is owed a push at |at| (kept in the store, so it survives a
 * restart; an earlier debt stays). esim_store_push_due hands it out then;
 * a recorded push clears it. ESIM_EINVAL for |at| <= 0; an unknown device
 * changes nothing. */
ESIM_EXTERN esim_err esim_store_device_owe_push(store *st, const char *udid, int64_t at,
                                                esim_error *err);

/* Up to |max| devices owed a push at |now| (push_due_at <= now); their debt
 * is cleared. |udids| gets them, *n how many. */
ESIM_EXTERN esim_err esim_store_push_due(store *st, int64_t now, char (*udids)[65], size_t max,
                                         size_t *n, esim_error *err);

/* Entries whose command expired before a final answer become expired.
 * *n (may be NULL) gets how many. */
ESIM_EXTERN esim_err esim_store_expire(store *st, int64_t now, size_t *n, esim_error *err);

/* Up to |limit| ledger events of the device with id > |after|, oldest first.
 * *out is owned by the caller (esim_store_events_free). */
ESIM_EXTERN esim_err esim_store_events_list(store *st, const char *udid, int64_t after,
                                            size_t limit, store_event **out, size_t *n,
                                            esim_error *err);

/* The device's newest ledger event whose kind is one of the |n_kinds|
 * |kinds| (1 to STORE_EVENT_KINDS_MAX), copied into |out| without its raw
 * body (out->raw is empty: nothing to free).
 *   ESIM_ENOTFOUND  the device has no such event;
 *   ESIM_EINVAL     no kinds, or more than STORE_EVENT_KINDS_MAX. */
#define STORE_EVENT_KINDS_MAX 4
ESIM_EXTERN esim_err esim_store_event_latest(store *st, const char *udid, const char *const *kinds,
                                             size_t n_kinds, store_event *out, esim_error *err);

/* Appends one event to the ledger outside any other operation (admin
 * actions, pushes, webhook give-ups). |udid|, |command_uuid|, |detail| and
 * |raw| may be NULL.  ESIM_EINVAL  no kind. */
ESIM_EXTERN esim_err esim_store_event_append(store *st, const char *kind, const char *udid,
                                             const char *command_uuid, const char *detail,
                                             const void *raw, size_t raw_len, int64_t now,
                                             esim_error *err);

/* ---- the audit log of admin actions -------------------------------------------- */

/* One admin action through the API: who (the API key's name and role), what
 * (method and path), when, and the result (HTTP status, and the error's
 * message when it failed). Text fields are cut to their size. */
typedef struct {
    int64_t id; /* increasing; page with it (ignored by audit_add) */
    int64_t at; /* wall-clock ms */
    char who[64];
    char role[16];
    char method[8];
    char target[256];
    int status;
    char detail[256];
} store_audit;

/* Appends one entry.  ESIM_EINVAL  no who, method or target. */
ESIM_EXTERN esim_err esim_store_audit_add(store *st, const store_audit *in, esim_error *err);
/* Up to |limit| entries with id > |after|, oldest first; *out is malloc'd
 * (free()), *n its length. */
ESIM_EXTERN esim_err esim_store_audit_list(store *st, int64_t after, size_t limit,
                                           store_audit **out, size_t *n, esim_error *err);

/* ---- the webhook outbox --------------------------------------------------------
 * Webhook deliveries waiting for a 2xx, kept so that a restart loses none:
 * the service adds a row in the same batch as the change it reports and
 * deletes it once delivered (or given up), so each event is delivered at
 * least once (docs/api.md, "Webhooks"). |url_key| names the receiver
 * without its URL (which may hold credentials). */
typedef struct {
    int64_t id;
    int64_t url_key;
    int64_t created_at;
    esim_buf body;
} store_outbox_row;

/* Adds a row; *id (may be NULL) is its key.  ESIM_EINVAL  an empty body. */
ESIM_EXTERN esim_err esim_store_outbox_add(store *st, int64_t url_key, const void *body, size_t len,
                                           int64_t now, int64_t *id, esim_error *err);
/* Deletes row |id| (one already gone is no error). */
ESIM_EXTERN esim_err esim_store_outbox_delete(store *st, int64_t id, esim_error *err);
/* Deletes the |n| rows |ids| (those already gone are no error), all or
 * none: on PostgreSQL one statement.  ESIM_EINVAL  NULL |ids| with n > 0. */
ESIM_EXTERN esim_err esim_store_outbox_delete_ids(store *st, const int64_t *ids, size_t n,
                                                  esim_error *err);
/* Up to |limit| rows with id > |after|, oldest first; *out is the caller's
 * (esim_store_outbox_free). */
ESIM_EXTERN esim_err esim_store_outbox_list(store *st, int64_t after, size_t limit,
                                            store_outbox_row **out, size_t *n, esim_error *err);
ESIM_EXTERN void esim_store_outbox_free(store_outbox_row *rows, size_t n);

/* ---- IoT devices and their eIM packages (SGP.32) ------------------------------
 * The eIM's side of an IoT eUICC (docs/iot.md): the association the
 * manufacturer's list gave it, the counter of the packages signed for it, the
 * eUICC certificate the eIM verified, and every package queued for it with
 * the signed request and the eUICC's answer as they went over the wire. The
 * device is also a device record of platform "iot" (its UDID is its EID) and
 * each package a command on its queue: ledger, webhooks and command status
 * are those of every other command. */

/* What the eIM knows of one IoT eUICC. */
typedef struct {
    char eid[ESIM_EID_LEN + 1];
    /* "unregistered" (it polled, nobody registered it), "registered" (the
     * eIM waits for its eUICC certificate), "ready" (certificate verified
     * and kept: results are checked against it). */
    char state[16];
    int64_t association_token; /* as the eUICC gave it at AddInitialEim; 0 = none */
    int64_t counter;           /* the last counterValue used: the next package gets more */
    int64_t last_poll_ms, registered_ms, updated_ms;
    char last_error[256]; /* the last thing that went wrong with it ("" none) */
    esim_buf euicc_cert;  /* DER, empty until verified; owned (esim_buf_free) */
} store_iot_device;

/*
 * Registers |eid| with its association token and the last counter value
 * used (|counter|, 0 when none), as a manufacturer's association list does.
 * An EID that only polled so far becomes registered. *created (may be NULL)
 * says whether it was new.
 *   ESIM_EINVAL  not a valid EID, a token under 1, a negative counter;
 *   ESIM_EEXIST  already registered (nothing changes).
 */
ESIM_EXTERN esim_err esim_store_iot_register(store *st, const char *eid, int64_t token,
                                             int64_t counter, int64_t now, bool *created,
                                             esim_error *err);
/* The record of |eid| into |out| (its euicc_cert is the caller's).
 *   ESIM_ENOTFOUND  never registered and never polled. */
ESIM_EXTERN esim_err esim_store_iot_get(store *st, const char *eid, store_iot_device *out,
                                        esim_error *err);
/* Up to |limit| records with EID > |after| ("" or NULL: from the start) in
 * EID order, without certificates: *out malloc'd (free()). */
ESIM_EXTERN esim_err esim_store_iot_list(store *st, const char *after, size_t limit,
                                         store_iot_device **out, size_t *n, esim_error *err);
/* Records a poll of |eid| at |now|; an unknown EID is kept as
 * "unregistered" so diagnosis can say so. *out (may be NULL) gets the
 * record (its euicc_cert the caller's).  ESIM_EINVAL  not a valid EID. */
ESIM_EXTERN esim_err esim_store_iot_poll(store *st, const char *eid, int64_t now,
                                         store_iot_device *out, esim_error *err);
/* Takes the next counter value of |eid| (the stored one + 1, stored): never
 * the same twice, even when the package it signs is dropped later.
 *   ESIM_ENOTFOUND  no such EID;  ESIM_ESTATE  not registered. */
ESIM_EXTERN esim_err esim_store_iot_counter_next(store *st, const char *eid, int64_t now,
                                                 int64_t *counter, esim_error *err);
/* Changes what is known of |eid|: |state| (NULL keeps it: "registered" or
 * "ready"), the eUICC certificate (|cert| NULL keeps it), |last_error|
 * (NULL keeps it, "" clears it).
 *   ESIM_ENOTFOUND  no such EID;  ESIM_EINVAL  another state. */
ESIM_EXTERN esim_err esim_store_iot_update(store *st, const char *eid, const char *state,
                                           const void *cert, size_t cert_len,
                                           const char *last_error, int64_t now, esim_error *err);

/* One package for one EID. */
typedef struct {
    char command_uuid[128]; /* the queue's command */
    char eid[ESIM_EID_LEN + 1];
    char kind[16]; /* "psmo", "eco", "euicc_data", "download" */
    /* "queued", "sent", then "done" (every operation ok), "failed" (the
     * eUICC refused an operation or the package: result_words says why),
     * "signature_error" (the result's signature does not verify with the
     * eUICC certificate) or "counter_error" (it echoes another counter or
     * eimId). */
    char state[24];
    int64_t counter; /* the counterValue it was signed with; 0 until sent */
    int64_t created_ms, sent_ms, answered_ms;
    char summary[256];  /* what it asks, in words */
    char *result_words; /* the result in words (JSON text); NULL until answered */
    char error[256];    /* a signature, counter or format error; "" none */
    esim_buf request;   /* the signed DER sent; empty until sent */
    esim_buf result;    /* the DER answered; empty until answered */
    /* A download trigger, once delivered: the SM-DP+ of its activation code
     * as the eIM relays to it (eim_smdp_key: "host:port", the host in lower
     * case, port 443 when the code names none); "" otherwise. A put with ""
     * keeps the stored one. */
    char smdp[262];
} store_iot_package;

/* Creates or replaces the package (command_uuid, eid) with every field of
 * |p| (result_words NULL is none).
 *   ESIM_EINVAL  no command UUID, a bad EID, no kind or state. */
ESIM_EXTERN esim_err esim_store_iot_package_put(store *st, const store_iot_package *p, int64_t now,
                                                esim_error *err);
/* Up to |limit| packages, newest first, of |eid| or of the command |uuid|
 * (one of them non-empty; both: that one package). *out is the caller's
 * (esim_store_iot_packages_free). */
ESIM_EXTERN esim_err esim_store_iot_packages(store *st, const char *eid, const char *uuid,
                                             size_t limit, store_iot_package **out, size_t *n,
                                             esim_error *err);
ESIM_EXTERN void esim_store_iot_packages_free(store_iot_package *p, size_t n); /* NULL ok */

/* ---- the eIM's relay of indirect downloads (eim_relay.c) ---------------------
 * esim_store_iot_trigger_find: *found is whether a download trigger the eIM
 *   delivered names SM-DP+ |smdp| (store_iot_package.smdp), for |eid| ("" or
 *   NULL: any EID); with |pending|, only one whose result has not come yet
 *   (state "sent").
 * A relay session (SGP.22 transactionId -> the SM-DP+ it runs on), shared by
 * the instances on one store:
 * esim_store_relay_session_put: creates or replaces s->txid, and removes the
 *   sessions created before |expired_before|.
 * esim_store_relay_session_get: ESIM_ENOTFOUND when there is none.
 * esim_store_relay_session_drop: removes it (none is fine). */
typedef struct {
    char txid[33]; /* upper-case hex */
    char smdp[256];
    char eid[ESIM_EID_LEN + 1]; /* "" until known (authenticateClient) */
    int64_t created_ms;
} store_relay_session;
ESIM_EXTERN esim_err esim_store_iot_trigger_find(store *st, const char *smdp, const char *eid,
                                                 bool pending, bool *found, esim_error *err);
ESIM_EXTERN esim_err esim_store_relay_session_put(store *st, const store_relay_session *s,
                                                  int64_t expired_before, esim_error *err);
ESIM_EXTERN esim_err esim_store_relay_session_get(store *st, const char *txid,
                                                  store_relay_session *out, esim_error *err);
ESIM_EXTERN esim_err esim_store_relay_session_drop(store *st, const char *txid, esim_error *err);
/* Several instances on one store (ESIM_STORE_FEATURE_SHARED) share the
 * outbox: each row is claimed by the instance that sends it, for
 * |claim_ms| on the database's clock, and renewed while it keeps trying;
 * a row whose claim lapsed (its instance died) is claimed by another. A
 * row is sent by one instance at a time, at least once overall (an
 * instance killed after the receiver's 2xx and before the row's delete
 * leaves it to be sent again, with the same event id).
 * esim_store_outbox_add_claimed: as esim_store_outbox_add, the new row
 *   claimed by |owner|, in the same one INSERT.
 * esim_store_outbox_claim: up to |limit| rows nobody holds (or whose claim
 *   lapsed), oldest first, now claimed by |owner| (rows another instance
 *   holds are skipped, never waited for); as esim_store_outbox_list.
 * esim_store_outbox_renew: extends every claim |owner| holds.
 * Without the feature there is one instance: add_claimed writes the claim
 * (never read), claim lists from the first row, renew does nothing.
 *   ESIM_EINVAL  add_claimed without a body, an owner or claim_ms > 0. */
ESIM_EXTERN esim_err esim_store_outbox_add_claimed(store *st, int64_t url_key, const void *body,
                                                   size_t len, const char *owner, int64_t claim_ms,
                                                   int64_t now, int64_t *id, esim_error *err);
ESIM_EXTERN esim_err esim_store_outbox_claim(store *st, const char *owner, int64_t claim_ms,
                                             size_t limit, store_outbox_row **out, size_t *n,
                                             esim_error *err);
ESIM_EXTERN esim_err esim_store_outbox_renew(store *st, const char *owner, int64_t claim_ms,
                                             esim_error *err);

/* Counts for /metrics and /healthz. */
ESIM_EXTERN esim_err esim_store_stats(store *st, store_stats *out, esim_error *err);

/* ---- several operations as one ----------------------------------------------
 * Between esim_store_unit_begin and esim_store_unit_end the operations form
 * one all-or-nothing unit: each is still all-or-nothing on its own (a
 * refused one leaves the unit as it was), and together they are committed,
 * or undone, at unit_end. Units nest (an inner unit is a part of the outer
 * one); inside an open batch a unit is a part of the batch. As ever, nothing
 * done in a unit may be reported to anyone before it is committed (and, in
 * group mode, synced). This is how a caller writes its own records in the
 * same transaction as the queue entries they describe. */
ESIM_EXTERN esim_err esim_store_unit_begin(store *st, esim_error *err);
/* Commits the unit when |ok|, undoes it otherwise (and returns ESIM_OK).
 *   ESIM_ESTORE  it could not be committed: all of it is undone. */
ESIM_EXTERN esim_err esim_store_unit_end(store *st, bool ok, esim_error *err);
/* A unit for a caller that undoes all of it when any operation in it
 * fails (it ends with ok false then): the operations skip what makes each
 * one undoable on its own (on PostgreSQL a savepoint each, two round trips
 * to the server), and the first failure fails the whole unit. Ended by
 * esim_store_unit_end; inside an operation or a batch, a unit as above. */
ESIM_EXTERN esim_err esim_store_unit_begin_whole(store *st, esim_error *err);

/* ---- campaign records -------------------------------------------------------
 * The campaign layer's records, kept in the same store (and database) as the
 * devices and queues. The store does not interpret them: states, steps and
 * flags are the campaign layer's numbers, the definition its text. */

/* A campaign. Strings are borrowed on the way in (for the call) and owned by
 * the list on the way out. */
typedef struct {
    const char *id;         /* required, unique */
    const char *name;       /* may be NULL or "" */
    const char *definition; /* the campaign's definition as its layer wrote it; required */
    int state;
    int64_t created_ms;
    int64_t updated_ms;       /* when read */
    int64_t version;          /* when read: 1 at creation, one more at every write of the row */
    int64_t pushes, commands; /* when read: the totals last written with
                                 esim_store_campaign_totals (0 before) */
} store_campaign;

/* One device of a campaign. */
typedef struct {
    size_t index; /* its position in the campaign, from 0 */
    char udid[65];
    char eid[ESIM_EID_LEN + 1];
    char iccid[21];
    int state, step, retries, verify_tries, flags, pushes, push_state;
    int64_t not_now, changed_ms, next_ms, deadline_ms, last_push_ms;
    char command_uuid[128]; /* the command it waits on; "" none */
    char *reason;           /* may be NULL; borrowed when written, owned when read */
    uint8_t platform;       /* the campaign layer's platform number (0 = Apple) */
} store_campaign_device;

/* One command a campaign queued, and the step it serves. */
typedef struct {
    char uuid[128];
    int step;
} store_campaign_command;

/*
 * Writes what changed in one campaign, as one operation: its row when |c|
 * is not NULL (created, or its state, definition and updated time replaced),
 * the |n_cmds| commands it queued (a uuid already recorded keeps its place),
 * and the |n_devs| device records (each replacing the record at its index).
 *   ESIM_EINVAL  a missing id, definition or command uuid.
 */
ESIM_EXTERN esim_err esim_store_campaign_save(store *st, const char *campaign_id,
                                              const store_campaign *c,
                                              const store_campaign_command *cmds, size_t n_cmds,
                                              const store_campaign_device *devs, size_t n_devs,
                                              int64_t now, esim_error *err);

/*
 * Replaces campaign |campaign_id|'s totals (the pushes it sent and the
 * commands it queued over its whole life, as the instance that drives it
 * counts them), read back with esim_store_campaigns: the instance that
 * takes the campaign over goes on from them. Not a change of the row: its
 * version stays. Inside a unit (esim_store_unit_begin) it commits with the
 * rest of the campaign's records.
 *   ESIM_EINVAL     a missing id or a negative total;
 *   ESIM_ENOTFOUND  no such campaign.
 */
ESIM_EXTERN esim_err esim_store_campaign_totals(store *st, const char *campaign_id, int64_t pushes,
                                                int64_t commands, esim_error *err);

/*
 * Changes the state of campaign |campaign_id| to |state| only if its row is
 * still at |expect_version| (as read with esim_store_campaigns, or returned
 * by an earlier call): a compare-and-set, with the row locked for the
 * operation, so two instances changing one campaign at once never overwrite
 * each other unseen. On success the row's version goes up by one; *version
 * (may be NULL) gets the row's version and *cur_state (may be NULL) its
 * state, as they are after the call, on success and on ESIM_ESTATE alike.
 *   ESIM_ENOTFOUND  no such campaign;
 *   ESIM_ESTATE     the row is at another version (someone changed it since):
 *                   nothing changed; read what it is now and decide again.
 */
ESIM_EXTERN esim_err esim_store_campaign_set_state(store *st, const char *campaign_id, int state,
                                                   int64_t expect_version, int64_t now,
                                                   int *cur_state, int64_t *version,
                                                   esim_error *err);

/* Every campaign, oldest first. *out and its strings are the caller's
 * (esim_store_campaigns_free). */
ESIM_EXTERN esim_err esim_store_campaigns(store *st, store_campaign **out, size_t *n,
                                          esim_error *err);
ESIM_EXTERN void esim_store_campaigns_free(store_campaign *list, size_t n); /* NULL ok */

/* A campaign's device records in index order. *out is the caller's
 * (esim_store_campaign_devices_free). */
ESIM_EXTERN esim_err esim_store_campaign_devices(store *st, const char *campaign_id,
                                                 store_campaign_device **out, size_t *n,
                                                 esim_error *err);
ESIM_EXTERN void esim_store_campaign_devices_free(store_campaign_device *devs,
                                                  size_t n); /* NULL ok */

/* A campaign's commands in the order they were recorded: *out malloc'd
 * (free()), |n| of them. */
ESIM_EXTERN esim_err esim_store_campaign_commands(store *st, const char *campaign_id,
                                                  store_campaign_command **out, size_t *n,
                                                  esim_error *err);

/* ---- what campaigns know about devices ---------------------------------------- */

/* An EID manifest row (serial number -> EID) and an activation-code row. */
typedef struct {
    const char *serial, *eid;
} store_manifest_row;
typedef struct {
    const char *eid, *code, *smdp_address, *matching_id, *iccid; /* iccid may be "" */
} store_code_row;

/* Offline imports, each one operation: a row replaces an earlier one with
 * the same serial (manifest) or EID (codes).  ESIM_EINVAL  a field missing. */
ESIM_EXTERN esim_err esim_store_manifest_import(store *st, const store_manifest_row *rows, size_t n,
                                                int64_t now, esim_error *err);
ESIM_EXTERN esim_err esim_store_codes_import(store *st, const store_code_row *rows, size_t n,
                                             int64_t now, esim_error *err);
/* The EID a manifest gave |serial|.  ESIM_ENOTFOUND when none. */
ESIM_EXTERN esim_err esim_store_manifest_eid(store *st, const char *serial,
                                             char eid[ESIM_EID_LEN + 1], esim_error *err);
/* The ICCID ("" when the row has none) and MatchingID an activation-code row
 * gave |eid|.  ESIM_ENOTFOUND when no row. */
ESIM_EXTERN esim_err esim_store_code_for_eid(store *st, const char *eid, char iccid[21],
                                             char matching_id[256], esim_error *err);

/* Groups and tags. Names: 1 to 64 characters of [A-Za-z0-9._-]. */
ESIM_EXTERN esim_err esim_store_name_validate(const char *what, const char *name, esim_error *err);

/* Creates the group (|create|) or changes an existing one: adds the |n_add|
 * UDIDs and removes the |n_remove| ones, as one operation.
 *   ESIM_EINVAL     a bad group name or UDID;
 *   ESIM_EEXIST     |create| and the group exists;
 *   ESIM_ENOTFOUND  not |create| and there is no such group. */
ESIM_EXTERN esim_err esim_store_group_put(store *st, const char *name, const char *const *add,
                                          size_t n_add, const char *const *remove, size_t n_remove,
                                          bool create, int64_t now, esim_error *err);
/* ESIM_ENOTFOUND  no such group. */
ESIM_EXTERN esim_err esim_store_group_delete(store *st, const char *name, esim_error *err);

typedef struct {
    char name[65];
    uint64_t members;
} store_group;
/* Every group in name order: *out malloc'd (free()). */
ESIM_EXTERN esim_err esim_store_groups(store *st, store_group **out, size_t *n, esim_error *err);
/* Members of a group (ESIM_ENOTFOUND when none such), devices with a tag,
 * or the tags of a device, each in order: *out malloc'd (free()), 65-byte
 * slots. */
ESIM_EXTERN esim_err esim_store_group_members(store *st, const char *name, char (**out)[65],
                                              size_t *n, esim_error *err);
ESIM_EXTERN esim_err esim_store_tag_devices(store *st, const char *tag, char (**out)[65], size_t *n,
                                            esim_error *err);
ESIM_EXTERN esim_err esim_store_device_tags(store *st, const char *udid, char (**out)[65],
                                            size_t *n, esim_error *err);
/* Adds and removes tags of a device, as one operation.
 *   ESIM_EINVAL  a bad UDID or tag name. */
ESIM_EXTERN esim_err esim_store_tags_set(store *st, const char *udid, const char *const *add,
                                         size_t n_add, const char *const *remove, size_t n_remove,
                                         esim_error *err);

/* What DeviceInformation answers taught campaigns about a device. */
typedef struct {
    char udid[65];
    int supervised; /* 1, 0, or -1 unknown */
    char os_version[32];
    char eid[ESIM_EID_LEN + 1]; /* the verified eSIM, when one was */
    char iccid[21];
    int64_t verified_ms; /* when the expected eSIM was last seen; 0 never */
    int64_t updated_ms;
} store_device_facts;

/* Records the facts of |n| devices, as one operation. A field left unknown
 * (-1, "", 0) keeps its old value; the ICCID goes with the EID. */
ESIM_EXTERN esim_err esim_store_facts_put(store *st, const store_device_facts *facts, size_t n,
                                          esim_error *err);
/* ESIM_ENOTFOUND when nothing is known (|out| then reads unknown). */
ESIM_EXTERN esim_err esim_store_facts_get(store *st, const char *udid, store_device_facts *out,
                                          esim_error *err);

/* ---- several instances: leases and notifications -----------------------------
 * A lease names a piece of work one instance drives at a time (a campaign:
 * "campaign:ID"); its holder renews it well within |ttl_ms|, and any
 * instance takes it over once it has lapsed (its holder died or lost the
 * database). Expiry is reckoned on the database's clock, so the instances'
 * clocks need not agree. Without ESIM_STORE_FEATURE_SHARED there is one
 * instance and it holds every lease. */

/* Takes the lease |name| for |owner| (1 to 63 characters), or renews it when
 * |owner| holds it, until |ttl_ms| from now. *held says whether |owner| holds
 * it now; |holder| (may be NULL) gets who does ("" when nobody could be
 * read).  ESIM_EINVAL  a missing name or owner, or ttl_ms < 1. */
ESIM_EXTERN esim_err esim_store_lease(store *st, const char *name, const char *owner,
                                      int64_t ttl_ms, bool *held, char holder[64], esim_error *err);
/* Gives the lease up when |owner| holds it (another instance may take it at
 * once); nothing when it does not. */
ESIM_EXTERN esim_err esim_store_lease_release(store *st, const char *name, const char *owner,
                                              esim_error *err);

/* Tells every instance listening on this store (this one included)
 * |topic| (1 to 63 characters of [a-z_]) with |payload| (up to 7000 bytes,
 * no NUL; may be NULL). Inside an open unit or batch it is delivered when
 * that commits, and not at all when it is undone. Does nothing without
 * ESIM_STORE_FEATURE_SHARED.  ESIM_EINVAL  a bad topic or an overlong
 * payload. */
ESIM_EXTERN esim_err esim_store_notify(store *st, const char *topic, const char *payload,
                                       esim_error *err);

/* A connection of its own that receives the notifications of the store, to
 * be watched by the caller's event loop. */
typedef struct store_listener store_listener;
/* Opens one (*out is the caller's: esim_store_listener_free).
 *   ESIM_ESTATE  the store has no ESIM_STORE_FEATURE_SHARED;
 *   ESIM_ESTORE  the database could not be reached. */
ESIM_EXTERN esim_err esim_store_listen(store *st, store_listener **out, esim_error *err);
/* The socket to watch for reading. */
ESIM_EXTERN int esim_store_listener_fd(const store_listener *l);
/* Reads what the socket has and calls |fn| once per notification received,
 * in order (|payload| is "" when none was given). Never blocks.
 *   ESIM_ESTORE  the connection is lost: free the listener and open another
 *                (notifications sent meanwhile are lost; catch up from the
 *                store). */
ESIM_EXTERN esim_err esim_store_listener_read(store_listener *l,
                                              void (*fn)(const char *topic, const char *payload,
                                                         void *arg),
                                              void *arg, esim_error *err);
ESIM_EXTERN void esim_store_listener_free(store_listener *l); /* NULL ok */

/* ---- group commit -----------------------------------------------------------
 * Batching (ESIM_STORE_FEATURE_BATCH): between batch_begin and batch_commit
 * every operation is still all-or-nothing on its own (a refused one leaves
 * the batch as it was), but they are committed together at batch_commit.
 * Nothing done inside a batch may be reported to anyone before batch_commit
 * (and then esim_store_sync) returns. batch_begin while a batch is open, or
 * batch_commit with none, does nothing.
 *   ESIM_ESTORE  the batch could not be committed: all of it is undone. */
ESIM_EXTERN esim_err esim_store_batch_begin(store *st, esim_error *err);
ESIM_EXTERN esim_err esim_store_batch_commit(store *st, esim_error *err);
/* Undoes the open batch (nothing in it may have been reported); later
 * operations commit on their own again. */
ESIM_EXTERN void esim_store_batch_rollback(store *st);

/* Deferred durability (ESIM_STORE_FEATURE_DEFERRED_SYNC), in two halves so
 * that making commits durable can run on another thread while the caller
 * goes on committing:
 * esim_store_commit_count: a number that grows with every committed change
 *   (call it on the thread doing the operations; 0 without the feature).
 * esim_store_sync: makes every operation committed before the call durable,
 *   many commits for the price of one. Safe on one other thread while
 *   operations run, one call at a time; does nothing unless the store was
 *   opened with STORE_SYNC_GROUP.
 *   ESIM_ESTORE  durability failed: those operations may not survive a power
 *                cut; do not report them as done. */
ESIM_EXTERN int64_t esim_store_commit_count(store *st);
ESIM_EXTERN esim_err esim_store_sync(store *st, esim_error *err);

#ifdef __cplusplus
}
#endif
#endif
