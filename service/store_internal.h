/*
 * store_internal.h — the seam between the store front (store.c) and its back
 * ends (store_sqlite.c, ...). Private to service/: never installed, so a new
 * operation here breaks nobody's build.
 *
 * The front holds the policy: it validates input, runs each esim_store_*
 * operation as one transaction (op_begin ... op_end) and decides, in one
 * place for every back end, who may enroll, what a Status does to a queue
 * entry and what is an anomaly. A back end holds the mechanism: it stores and
 * fetches, one small step per function, each inside the front's transaction.
 * A new back end fills a struct store_ops, sets the features it has, and
 * passes tests/service/test_store.c run with its store spec.
 */
#ifndef ESIM_SERVICE_STORE_INTERNAL_H
#define ESIM_SERVICE_STORE_INTERNAL_H

#include "service/store.h"

/* Every back end's handle starts with this. */
struct store {
    const struct store_ops *ops;
    /* The last failure's words (esim_store_last_error): kept whether or not
     * the caller asked for them, so a failure reported without them (an
     * answer's store error, a batch undone) can still be told. */
    char last_error[512];
};

/* Every back end's listener starts with this. */
struct store_listener {
    const struct store_ops *ops;
};

/* Which list of names names_list reads. */
typedef enum {
    STORE_NAMES_GROUP_MEMBERS, /* key: a group */
    STORE_NAMES_TAG_DEVICES,   /* key: a tag */
    STORE_NAMES_DEVICE_TAGS,   /* key: a UDID */
} store_names;

/* Who a device is, for the identity rules. */
typedef struct {
    bool enrolled;
    char cert_sha256[65];   /* bound at enrolment; may be empty */
    int64_t enrolled_at;    /* start of the current enrolment */
    char serial_number[64]; /* as the device last reported it; may be empty */
} store_identity;

/*
 * The operations of a back end. Unless said otherwise each returns ESIM_OK
 * or ESIM_ESTORE/ESIM_ENOMEM with |err| set, and the steps (everything
 * between op_begin and op_end) run inside the front's transaction. A queue
 * entry is named by |entry|, the back end's key for it, valid only inside
 * the operation that found it. Strings are borrowed for the call.
 */
struct store_ops {
    const char *name;  /* "sqlite", ... */
    unsigned features; /* ESIM_STORE_FEATURE_* */

    /* Closes the handle and frees it. */
    void (*close)(store *st);

    /* ---- transactions ---- */
    /* Starts one operation: a transaction of its own, or a savepoint inside
     * the open batch or the operation already begun (operations nest:
     * esim_store_unit_begin is one too). */
    esim_err (*op_begin)(store *st, esim_error *err);
    /* Ends it: commits (or releases the savepoint) when |rc| is ESIM_OK,
     * undoes every step otherwise. Returns |rc|, or ESIM_ESTORE when the
     * commit failed (then undone too). */
    esim_err (*op_end)(store *st, esim_err rc, esim_error *err);
    /* Optional (NULL: op_begin): begins a unit whose operations are not
     * undone one by one (no savepoint each): the first that fails fails
     * the whole, which op_end then undoes. Never inside another operation
     * or a batch (then it is op_begin). */
    esim_err (*op_begin_whole)(store *st, esim_error *err);
    /* Optional (NULL: op_begin): begins an operation whose every refusal
     * comes before its first write (after one, only the store itself can
     * fail it). Directly in the open batch it may take no savepoint: a
     * refusal leaves the batch as it was, as ever, and a failure after it
     * wrote makes the batch's commit fail, undoing the batch whole. */
    esim_err (*op_begin_checked)(store *st, esim_error *err);

    /* ---- device steps ---- */
    /* ESIM_ENOTFOUND (|err| untouched) when there is no such device. */
    esim_err (*device_identity)(store *st, const char *udid, store_identity *out, esim_error *err);
    /* A device other than |udid| that |cert_sha256| is bound to, into
     * |other|. ESIM_ENOTFOUND (|err| untouched) when none. */
    esim_err (*device_by_cert)(store *st, const char *cert_sha256, const char *udid, char other[65],
                               esim_error *err);
    /* Creates the device or updates it from |in|: enrolled, |in->cert_sha256|
     * bound, push token, magic and state cleared (kept when |keep_token|),
     * a non-empty field replaces the stored one, an empty one keeps it;
     * enrolled_at = |now| unless it was already enrolled; last_seen_at = |now|. */
    esim_err (*device_enroll)(store *st, const store_authenticate_in *in, bool keep_token,
                              int64_t now, esim_error *err);
    /* A new enrolment starts at |at| (enrolled_at). */
    esim_err (*device_restart_enrolment)(store *st, const char *udid, int64_t at, esim_error *err);
    /* Topic, token and magic stored, push state valid, token_updated_at and
     * last_seen_at = |now|, token_update_tally + 1 (device_enroll and
     * device_unenroll set it to 0), the new tally in |*tally| unless |tally|
     * is NULL (PostgreSQL: the UPDATE returns it; SQLite: a narrow read after
     * it, cheaper there than RETURNING). */
    esim_err (*device_set_token)(store *st, const char *udid, const char *topic,
                                 const char *token_hex, const char *push_magic, int64_t now,
                                 int64_t *tally, esim_error *err);
    /* Not enrolled, token and magic cleared, push state none, no push owed,
     * checked_out_at and last_seen_at = |now|. */
    esim_err (*device_unenroll)(store *st, const char *udid, int64_t now, esim_error *err);
    /* last_seen_at = |now|; the EID too when |eid| is not NULL. */
    esim_err (*device_seen)(store *st, const char *udid, const char *eid, int64_t now,
                            esim_error *err);
    /* Optional (NULL: device_identity, then device_seen): device_seen in
     * one statement with the identity check of a device's request, when it
     * passes as it is: the device enrolled and |cert_sha256| (NULL or "":
     * none presented) the identity bound to it. ESIM_OK when so; else
     * ESIM_ENOTFOUND (|err| untouched, nothing changed), and the caller
     * finds out why (an unknown device, one checked out, another identity,
     * a first identity to bind) through device_identity. */
    esim_err (*device_seen_verified)(store *st, const char *udid, const char *cert_sha256,
                                     const char *eid, int64_t now, esim_error *err);
    /* Optional (NULL: device_get): the push facts of device |udid| (not
     * NULL) alone, as esim_store_push_target gives them; ESIM_ENOTFOUND. */
    esim_err (*push_target)(store *st, const char *udid, store_push_target *out, esim_error *err);
    /* Optional (NULL: device_get): the brief of device |udid| (not NULL)
     * alone, as esim_store_device_brief gives it; ESIM_ENOTFOUND. */
    esim_err (*device_brief)(store *st, const char *udid, store_device_brief *out, esim_error *err);
    /* A push is owed at |at|, unless an earlier one already is. */
    esim_err (*device_owe_push)(store *st, const char *udid, int64_t at, esim_error *err);
    /* Push state |ps|, and no push owed any more. */
    esim_err (*device_set_push_state)(store *st, const char *udid, store_push_state ps,
                                      esim_error *err);
    /* No push owed any more (push state kept). */
    esim_err (*device_push_paid)(store *st, const char *udid, esim_error *err);
    /* Up to |max| devices owed a push at |now|, earliest debt first; their
     * debt is cleared. */
    esim_err (*devices_take_push_due)(store *st, int64_t now, char (*udids)[65], size_t max,
                                      size_t *n, esim_error *err);
    /* Reads (outside any operation too), as esim_store_device_get/_list. */
    esim_err (*device_get)(store *st, const char *udid, store_device *out, esim_error *err);
    esim_err (*device_list)(store *st, const char *after, size_t limit, store_device **out,
                            size_t *n, esim_error *err);

    /* ---- queue steps ---- */
    /* ESIM_EEXIST (|err| untouched) when the uuid is already used. */
    esim_err (*command_insert)(store *st, const store_command_in *cmd, int64_t now,
                               esim_error *err);
    /* A queued entry of |cmd| for the device, enqueued at |now|. ESIM_EEXIST
     * (|err| untouched) when the device already has an entry for it. */
    esim_err (*entry_insert)(store *st, const char *udid, const store_command_in *cmd, int64_t now,
                             esim_error *err);
    /* Optional, for a back end where each statement is a round trip: an
     * answered entry (as entry_answer_sent, ESIM_ENOTFOUND with nothing
     * written) together with its "result" ledger row (detail |status|), and
     * an entry marked sent (as entry_mark_sent) together with its "sent"
     * row (detail |request_type|), each in one statement. Without them the
     * front makes the two calls. */
    esim_err (*entry_answer_sent_logged)(store *st, const char *udid, const char *uuid,
                                         store_qstate state, int not_now_add,
                                         const char *error_chain_json, const void *raw,
                                         size_t raw_len, const char *status, int64_t now,
                                         esim_error *err);
    esim_err (*entry_mark_sent_logged)(store *st, int64_t entry, const char *request_type,
                                       int64_t now, esim_error *err);
    /* Optional, as the two above: the usual enqueue of one device in one
     * statement, its entry (as entry_insert) and its "enqueued" ledger row,
     * written only when the device exists and is enrolled; ESIM_ENOTFOUND
     * (|err| untouched, nothing written) otherwise, and the front finds out
     * why; ESIM_EEXIST as entry_insert. */
    esim_err (*entry_enqueue)(store *st, const char *udid, const store_command_in *cmd, int64_t now,
                              esim_error *err);
    /* ESIM_ENOTFOUND (|err| untouched) when the command is not on the
     * device's queue. */
    esim_err (*entry_find)(store *st, const char *udid, const char *uuid, int64_t *entry,
                           store_qstate *state, esim_error *err);
    /* Records an answer: the new |state| (active or not as
     * esim_store_qstate_active says), answered_at = |now|, not_now_count +
     * |not_now_add|, the error chain (NULL = none) and the raw answer. */
    esim_err (*entry_answer)(store *st, int64_t entry, store_qstate state, int not_now_add,
                             const char *error_chain_json, const void *raw, size_t raw_len,
                             int64_t now, esim_error *err);
    /* Optional (NULL: entry_find, then entry_answer): entry_answer in one
     * statement for the entry of |udid| and |uuid| when it awaits an
     * answer (state sent). ESIM_OK when so; else ESIM_ENOTFOUND (|err|
     * untouched, nothing changed), and the caller reads the entry with
     * entry_find. */
    esim_err (*entry_answer_sent)(store *st, const char *udid, const char *uuid, store_qstate state,
                                  int not_now_add, const char *error_chain_json, const void *raw,
                                  size_t raw_len, int64_t now, esim_error *err);
    /* The device's deliverable entry with the highest priority, then the
     * oldest, whose command is not expired at |now| and whose uuid is not one
     * of |skip|: *entry and |next| (uuid, request type, body appended to
     * next->body, present = true). next->present stays false when none. */
    esim_err (*entry_next)(store *st, const char *udid, int64_t now, const char *const *skip,
                           size_t n_skip, int64_t *entry, store_next_command *next,
                           esim_error *err);
    /* State sent, attempts + 1, sent_at = |now|. */
    esim_err (*entry_mark_sent)(store *st, int64_t entry, int64_t now, esim_error *err);
    /* State canceled, out of delivery. */
    esim_err (*entry_cancel)(store *st, int64_t entry, int64_t now, esim_error *err);
    /* Out of delivery for good, its state kept as it is. */
    esim_err (*entry_retire)(store *st, int64_t entry, int64_t now, esim_error *err);
    /* The device's entry of a |request_type| command most recently sent at
     * or after |since|, in state sent or acknowledged, and when it was sent
     * (|sent_at| may be NULL). ESIM_ENOTFOUND (|err| untouched) when none. */
    esim_err (*entry_last_sent)(store *st, const char *udid, const char *request_type,
                                int64_t since, int64_t *entry, int64_t *sent_at, esim_error *err);
    /* Every active entry of the device becomes canceled, each with a ledger
     * event |kind| carrying |detail|. */
    esim_err (*entries_cancel_device)(store *st, const char *udid, const char *kind,
                                      const char *detail, int64_t now, esim_error *err);
    /* The device's queued and not_now entries become pushed at |now|. */
    esim_err (*entries_pushed)(store *st, const char *udid, int64_t now, esim_error *err);
    /* Active entries whose expiry is at or before |now| become expired, each
     * with a ledger event |kind|; *n how many. */
    esim_err (*entries_expire)(store *st, const char *kind, int64_t now, size_t *n,
                               esim_error *err);
    /* Reads, as esim_store_command_get (after the front's checks). */
    esim_err (*command_get)(store *st, const char *uuid, const char *after, size_t limit,
                            store_command_info *info, store_queue_entry **entries, size_t *n,
                            esim_error *err);
    /* The device's active entries in delivery order, then (|with_done|) up
     * to 100 final ones, newest first; *entries as esim_store_device_queue. */
    esim_err (*device_entries)(store *st, const char *udid, bool with_done,
                               store_queue_entry **entries, size_t *n, esim_error *err);

    /* ---- the ledger ---- */
    esim_err (*event_add)(store *st, int64_t now, const char *kind, const char *udid,
                          const char *command_uuid, const char *detail, const void *raw,
                          size_t raw_len, esim_error *err);
    esim_err (*events_list)(store *st, const char *udid, int64_t after, size_t limit,
                            store_event **out, size_t *n, esim_error *err);
    /* ESIM_ENOTFOUND (|err| untouched) when none. */
    esim_err (*event_latest)(store *st, const char *udid, const char *const *kinds, size_t n_kinds,
                             store_event *out, esim_error *err);
    esim_err (*stats)(store *st, store_stats *out, esim_error *err);
    /* Optional (NULL: store.c scans device_list and facts_get): as
     * esim_store_device_search with |q| already lower-case and not empty, and
     * esim_store_fleet_counts. */
    esim_err (*device_search)(store *st, const char *q, const char *after, size_t limit,
                              store_device **out, size_t *n, esim_error *err);
    esim_err (*fleet_counts)(store *st, store_fleet_row **rows, size_t *n, esim_error *err);

    /* ---- the audit log ---- */
    esim_err (*audit_add)(store *st, const store_audit *in, esim_error *err);
    esim_err (*audit_list)(store *st, int64_t after, size_t limit, store_audit **out, size_t *n,
                           esim_error *err);
    /* ---- the webhook outbox ---- */
    /* One INSERT; |owner| NULL (or claim_ms 0): not claimed. */
    esim_err (*outbox_add)(store *st, int64_t url_key, const void *body, size_t len, int64_t now,
                           const char *owner, int64_t claim_ms, int64_t *id, esim_error *err);
    esim_err (*outbox_delete)(store *st, int64_t id, esim_error *err);
    /* Deletes the |n| rows |ids| in one statement; NULL: one by one. */
    esim_err (*outbox_delete_ids)(store *st, const int64_t *ids, size_t n, esim_error *err);
    esim_err (*outbox_list)(store *st, int64_t after, size_t limit, store_outbox_row **out,
                            size_t *n, esim_error *err);

    /* ---- IoT devices and packages ---- */
    /* ESIM_ENOTFOUND (|err| untouched) when none. |for_update|: the caller
     * writes the record back in the same operation, so the record, or the
     * EID while there is none yet, stays locked until the transaction ends:
     * two instances' read-modify-writes of one EID (a registration and a
     * poll, two counters) run one after the other, never over each other
     * (PostgreSQL; SQLite writes one transaction at a time anyway). */
    esim_err (*iot_get)(store *st, const char *eid, bool for_update, store_iot_device *out,
                        esim_error *err);
    /* Creates or replaces the whole record (certificate included). */
    esim_err (*iot_put)(store *st, const store_iot_device *d, esim_error *err);
    esim_err (*iot_list)(store *st, const char *after, size_t limit, store_iot_device **out,
                         size_t *n, esim_error *err);
    /* Creates or replaces the package (command_uuid, eid). */
    esim_err (*iot_pkg_put)(store *st, const store_iot_package *p, int64_t now, esim_error *err);
    /* As esim_store_iot_packages ("" for a key not filtered on; one of
     * them is given, and each case reads by an index). */
    esim_err (*iot_pkg_list)(store *st, const char *eid, const char *uuid, size_t limit,
                             store_iot_package **out, size_t *n, esim_error *err);
    /* As esim_store_iot_trigger_find (|eid| "" for any). */
    esim_err (*iot_trigger_find)(store *st, const char *smdp, const char *eid, bool pending,
                                 bool *found, esim_error *err);
    /* As esim_store_relay_session_put, _get (ESIM_ENOTFOUND, |err|
     * untouched), _drop. */
    esim_err (*relay_session_put)(store *st, const store_relay_session *s, int64_t expired_before,
                                  esim_error *err);
    esim_err (*relay_session_get)(store *st, const char *txid, store_relay_session *out,
                                  esim_error *err);
    esim_err (*relay_session_drop)(store *st, const char *txid, esim_error *err);

    /* ---- campaign records (steps) ---- */
    /* Creates the row (version 1), or replaces its state, definition and
     * updated time (version + 1). */
    esim_err (*campaign_put)(store *st, const store_campaign *c, int64_t now, esim_error *err);
    /* Records a command; one already recorded keeps its place. */
    esim_err (*campaign_command_put)(store *st, const char *campaign_id,
                                     const store_campaign_command *cmd, esim_error *err);
    /* Replaces the record at d->index. */
    esim_err (*campaign_device_put)(store *st, const char *campaign_id,
                                    const store_campaign_device *d, esim_error *err);
    /* The row's state and version, the row locked until the operation ends
     * (several instances); ESIM_ENOTFOUND (|err| untouched) when none. */
    esim_err (*campaign_state_get)(store *st, const char *id, int *state, int64_t *version,
                                   esim_error *err);
    /* Replaces the row's state and updated time; its version goes up by one. */
    esim_err (*campaign_state_put)(store *st, const char *id, int state, int64_t now,
                                   esim_error *err);
    /* Replaces the row's totals (esim_store_campaign_totals); version unchanged. */
    esim_err (*campaign_totals_put)(store *st, const char *id, int64_t pushes, int64_t commands,
                                    esim_error *err);
    /* Reads, as esim_store_campaigns, _campaign_devices, _campaign_commands. */
    esim_err (*campaigns_list)(store *st, store_campaign **out, size_t *n, esim_error *err);
    esim_err (*campaign_devices)(store *st, const char *campaign_id, store_campaign_device **out,
                                 size_t *n, esim_error *err);
    esim_err (*campaign_commands)(store *st, const char *campaign_id, store_campaign_command **out,
                                  size_t *n, esim_error *err);
    /* Replace the row of the same serial / EID. */
    esim_err (*manifest_put)(store *st, const store_manifest_row *row, int64_t now,
                             esim_error *err);
    esim_err (*code_put)(store *st, const store_code_row *row, int64_t now, esim_error *err);
    /* ESIM_ENOTFOUND (|err| untouched) when no row. */
    esim_err (*manifest_eid)(store *st, const char *serial, char eid[ESIM_EID_LEN + 1],
                             esim_error *err);
    esim_err (*code_for_eid)(store *st, const char *eid, char iccid[21], char matching_id[256],
                             esim_error *err);
    /* ESIM_OK when the group exists, ESIM_ENOTFOUND (|err| untouched) when not. */
    esim_err (*group_exists)(store *st, const char *name, esim_error *err);
    esim_err (*group_create)(store *st, const char *name, int64_t now, esim_error *err);
    /* Drops the group and its members. */
    esim_err (*group_drop)(store *st, const char *name, esim_error *err);
    /* Makes |udid| a member (|member|) or not; either may already be so. */
    esim_err (*group_member_set)(store *st, const char *name, const char *udid, bool member,
                                 esim_error *err);
    esim_err (*groups_list)(store *st, store_group **out, size_t *n, esim_error *err);
    /* Lists of names in order: a group's members, a tag's devices, a
     * device's tags (|which|), keyed by |key|. */
    esim_err (*names_list)(store *st, store_names which, const char *key, char (**out)[65],
                           size_t *n, esim_error *err);
    /* Gives the device |tag| (|on|) or takes it away; either may already be so. */
    esim_err (*tag_set)(store *st, const char *udid, const char *tag, bool on, esim_error *err);
    /* Merges |f| into the device's facts (unknown fields keep the old value;
     * the ICCID goes with the EID). */
    esim_err (*facts_put)(store *st, const store_device_facts *f, esim_error *err);
    /* ESIM_ENOTFOUND (|err| untouched) when none. */
    esim_err (*facts_get)(store *st, const char *udid, store_device_facts *out, esim_error *err);

    /* ---- enrolment extras (NanoMDM compatibility) ---- */
    /* Binds |cert_sha256| to the device (a device enrolled without one:
     * migrated, or enrolled while device auth was none). */
    esim_err (*device_bind_cert)(store *st, const char *udid, const char *cert_sha256,
                                 esim_error *err);
    /* The device's bootstrap token (SetBootstrapToken), replaced; |len| >= 1. */
    esim_err (*device_bootstrap_set)(store *st, const char *udid, const void *token, size_t len,
                                     esim_error *err);
    /* Appends it to |out|; ESIM_ENOTFOUND (|err| untouched) when the device
     * has none (or does not exist). */
    esim_err (*device_bootstrap_get)(store *st, const char *udid, esim_buf *out, esim_error *err);

    /* Its connection's counters (esim_store_backend_stats); |out| is zeroed. */
    void (*backend_stats)(store *st, store_backend_stats *out);

    /* ---- group commit: present only with the matching feature ---- */
    esim_err (*batch_begin)(store *st, esim_error *err);  /* FEATURE_BATCH */
    esim_err (*batch_commit)(store *st, esim_error *err); /* FEATURE_BATCH */
    void (*batch_rollback)(store *st);                    /* FEATURE_BATCH */
    int64_t (*commit_count)(store *st);                   /* FEATURE_DEFERRED_SYNC */
    esim_err (*sync)(store *st, esim_error *err);         /* FEATURE_DEFERRED_SYNC */

    /* ---- several instances: present only with FEATURE_SHARED ---- */
    /* Takes or renews lease |name| for |owner| for |ttl_ms|; *held, and
     * |holder| filled ("" when unknown). A step of the front's operation. */
    esim_err (*lease)(store *st, const char *name, const char *owner, int64_t ttl_ms, bool *held,
                      char holder[64], esim_error *err);
    esim_err (*lease_release)(store *st, const char *name, const char *owner, esim_error *err);
    /* Sends "topic payload" on the store's channel (a step: transactional). */
    esim_err (*notify)(store *st, const char *topic, const char *payload, esim_error *err);
    esim_err (*listen)(store *st, store_listener **out, esim_error *err);
    int (*listener_fd)(const store_listener *l);
    esim_err (*listener_read)(store_listener *l,
                              void (*fn)(const char *topic, const char *payload, void *arg),
                              void *arg, esim_error *err);
    void (*listener_free)(store_listener *l);
    /* The shared outbox (esim_store_outbox_claim...): claim up to |limit|
     * free or lapsed rows; renew |owner|'s. */
    esim_err (*outbox_claim)(store *st, const char *owner, int64_t claim_ms, size_t limit,
                             store_outbox_row **out, size_t *n, esim_error *err);
    esim_err (*outbox_renew)(store *st, const char *owner, int64_t claim_ms, esim_error *err);
};

/* Opens (creating and migrating) the SQLite database at |path|. */
esim_err store_sqlite_open(const char *path, const store_options *opts, store **out,
                           esim_error *err);
/* Rows the SQLite back end's statements have stepped through in full-table
 * scans since it opened (a statement that needs an index it cannot use
 * shows here; the tests check the device path has none). */
uint64_t store_sqlite_fullscan_steps(store *st);
/* Tests: how many times the SQLite store's statements ran so far
 * (SQLITE_STMTSTATUS_RUN over its cached statements, BEGIN and COMMIT
 * included). */
uint64_t store_sqlite_statements_run(store *st);
/* Tests: the SQLite store's own connection (to set a per-connection limit,
 * such as PRAGMA max_page_count, that makes it fail as a full disk would). */
struct sqlite3 *store_sqlite_db(store *st);
/* Tests: the PostgreSQL store's connection (to read the plans of the
 * statements it prepared); call it only between operations. */
struct pg_conn *store_pgsql_conn(store *st);
/* Makes SQLite allocate through store_sqlite_mem.c's per-thread cache of
 * small blocks; call once, before SQLite initialises (afterwards SQLite
 * refuses it and keeps its own allocator). */
void store_sqlite_mem_install(void);
/* 1 in an AddressSanitizer build, gcc's or clang's (clang does not define
 * __SANITIZE_ADDRESS__): the allocator then poisons the blocks it keeps. */
#if defined(__SANITIZE_ADDRESS__)
#define STORE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STORE_ASAN 1
#endif
#endif
#ifndef STORE_ASAN
#define STORE_ASAN 0
#endif
/* The newest schema version of the SQLite back end. */
int store_sqlite_schema_version(void);

/* Opens (creating the schema and migrating it) the PostgreSQL store named by
 * the libpq connection string or URI |conninfo|. */
esim_err store_pgsql_open(const char *conninfo, const store_options *opts, store **out,
                          esim_error *err);
/* The PostgreSQL back end's listener (store_pgsql_listen.c): a connection
 * of its own to |conninfo| that LISTENs on |channel|; |ops| is the back
 * end's table. */
esim_err pgsql_listener_open(const struct store_ops *ops, const char *conninfo, const char *channel,
                             store_listener **out, esim_error *err);
int pgsql_listener_fd(const store_listener *l);
esim_err pgsql_listener_read(store_listener *l,
                             void (*fn)(const char *topic, const char *payload, void *arg),
                             void *arg, esim_error *err);
void pgsql_listener_free(store_listener *l);
/* The newest schema version of the PostgreSQL back end: always the SQLite
 * back end's (the same migrations, in each one's SQL). */
int store_pgsql_schema_version(void);

#endif
