/*
 * store_sqlite.c — the embedded back end: SQLite in WAL mode behind the
 * private table of store_internal.h. Each step is one cached prepared
 * statement (or two) inside the front's transaction, which is a BEGIN
 * IMMEDIATE ... COMMIT of its own or a savepoint in the open batch; the
 * schema is an ordered list of migrations recorded in schema_version (append
 * an entry to evolve it, never edit an old one).
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core/internal.h"
#include "service/store.h"
#include "service/store_internal.h"

/* ---- schema ---------------------------------------------------------------
 * Plain SQL that PostgreSQL also accepts (INTEGER/TEXT, partial indexes,
 * ON CONFLICT upserts), so the pgsql back end can share it almost verbatim.
 * Queue states are stored by name; |active| mirrors "state is one of queued,
 * pushed, sent, not_now" so the delivery index stays small. */
typedef struct {
    int version;
    const char *sql;
} migration;

static const migration migrations[] = {
    {1, "CREATE TABLE devices ("
        " udid TEXT PRIMARY KEY,"
        " is_enrollment_id INTEGER NOT NULL DEFAULT 0,"
        " enrolled INTEGER NOT NULL DEFAULT 0,"
        " topic TEXT NOT NULL DEFAULT '',"
        " serial_number TEXT NOT NULL DEFAULT '',"
        " os_version TEXT NOT NULL DEFAULT '',"
        " build_version TEXT NOT NULL DEFAULT '',"
        " product_name TEXT NOT NULL DEFAULT '',"
        " model TEXT NOT NULL DEFAULT '',"
        " device_name TEXT NOT NULL DEFAULT '',"
        " imei TEXT NOT NULL DEFAULT '',"
        " eid TEXT NOT NULL DEFAULT '',"
        " cert_sha256 TEXT NOT NULL DEFAULT '',"
        " push_token TEXT NOT NULL DEFAULT '',"
        " push_magic TEXT NOT NULL DEFAULT '',"
        " push_state TEXT NOT NULL DEFAULT 'none',"
        " enrolled_at INTEGER NOT NULL DEFAULT 0,"
        " checked_out_at INTEGER NOT NULL DEFAULT 0,"
        " token_updated_at INTEGER NOT NULL DEFAULT 0,"
        " last_seen_at INTEGER NOT NULL DEFAULT 0,"
        " push_due_at INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX devices_push_due ON devices(push_due_at) WHERE push_due_at > 0;"
        "CREATE TABLE commands ("
        " uuid TEXT PRIMARY KEY,"
        " request_type TEXT NOT NULL,"
        " body BLOB NOT NULL,"
        " priority INTEGER NOT NULL DEFAULT 0,"
        " created_at INTEGER NOT NULL,"
        " expires_at INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE queue ("
        " id INTEGER PRIMARY KEY,"
        " udid TEXT NOT NULL REFERENCES devices(udid),"
        " command_uuid TEXT NOT NULL REFERENCES commands(uuid),"
        " priority INTEGER NOT NULL DEFAULT 0,"
        " expires_at INTEGER NOT NULL DEFAULT 0,"
        " state TEXT NOT NULL DEFAULT 'queued',"
        " active INTEGER NOT NULL DEFAULT 1,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " not_now_count INTEGER NOT NULL DEFAULT 0,"
        " enqueued_at INTEGER NOT NULL DEFAULT 0,"
        " pushed_at INTEGER NOT NULL DEFAULT 0,"
        " sent_at INTEGER NOT NULL DEFAULT 0,"
        " answered_at INTEGER NOT NULL DEFAULT 0,"
        " updated_at INTEGER NOT NULL DEFAULT 0,"
        " error_chain TEXT,"
        " result BLOB,"
        " UNIQUE (udid, command_uuid));"
        "CREATE INDEX queue_delivery ON queue(udid, priority DESC, id) WHERE active = 1;"
        "CREATE INDEX queue_command ON queue(command_uuid);"
        "CREATE INDEX queue_expiry ON queue(expires_at) WHERE active = 1 AND expires_at > 0;"
        "CREATE TABLE events ("
        " id INTEGER PRIMARY KEY,"
        " at INTEGER NOT NULL,"
        " kind TEXT NOT NULL,"
        " udid TEXT,"
        " command_uuid TEXT,"
        " detail TEXT,"
        " raw BLOB);"},
    /* 2: read a device's ledger without scanning everyone's. */
    {2, "CREATE INDEX events_udid ON events(udid, id);"},
    /* 3: page a command's devices in udid order without sorting them all. */
    {3, "DROP INDEX queue_command; CREATE INDEX queue_command ON queue(command_uuid, udid);"},
    /* 4: the campaign layer's records, in the same database as the queues
     * they describe (they used to live in campaigns.db beside it). */
    {4, "CREATE TABLE campaigns ("
        " id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL DEFAULT '',"
        " definition TEXT NOT NULL,"
        " state INTEGER NOT NULL,"
        " created_ms INTEGER NOT NULL,"
        " updated_ms INTEGER NOT NULL);"
        "CREATE TABLE campaign_devices ("
        " campaign TEXT NOT NULL,"
        " idx INTEGER NOT NULL,"
        " udid TEXT NOT NULL,"
        " eid TEXT NOT NULL DEFAULT '',"
        " iccid TEXT NOT NULL DEFAULT '',"
        " state INTEGER NOT NULL DEFAULT 0,"
        " step INTEGER NOT NULL DEFAULT 0,"
        " retries INTEGER NOT NULL DEFAULT 0,"
        " verify_tries INTEGER NOT NULL DEFAULT 0,"
        " flags INTEGER NOT NULL DEFAULT 0,"
        " pushes INTEGER NOT NULL DEFAULT 0,"
        " not_now INTEGER NOT NULL DEFAULT 0,"
        " changed_ms INTEGER NOT NULL DEFAULT 0,"
        " next_ms INTEGER NOT NULL DEFAULT 0,"
        " deadline_ms INTEGER NOT NULL DEFAULT 0,"
        " last_push_ms INTEGER NOT NULL DEFAULT 0,"
        " push_state INTEGER NOT NULL DEFAULT 0,"
        " command_uuid TEXT NOT NULL DEFAULT '',"
        " reason TEXT,"
        " PRIMARY KEY (campaign, idx));"
        "CREATE INDEX campaign_devices_udid ON campaign_devices(udid);"
        "CREATE TABLE campaign_commands ("
        " id INTEGER PRIMARY KEY,"
        " uuid TEXT NOT NULL UNIQUE,"
        " campaign TEXT NOT NULL,"
        " step INTEGER NOT NULL);"
        "CREATE INDEX campaign_commands_campaign ON campaign_commands(campaign, id);"
        "CREATE TABLE eid_manifest ("
        " serial TEXT PRIMARY KEY,"
        " eid TEXT NOT NULL,"
        " imported_ms INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE activation_codes ("
        " eid TEXT PRIMARY KEY,"
        " code TEXT NOT NULL,"
        " smdp TEXT NOT NULL DEFAULT '',"
        " matching_id TEXT NOT NULL DEFAULT '',"
        " iccid TEXT NOT NULL DEFAULT '',"
        " imported_ms INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE device_groups ("
        " name TEXT PRIMARY KEY,"
        " created_ms INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE device_group_members ("
        " grp TEXT NOT NULL,"
        " udid TEXT NOT NULL,"
        " PRIMARY KEY (grp, udid));"
        "CREATE TABLE device_tags ("
        " udid TEXT NOT NULL,"
        " tag TEXT NOT NULL,"
        " PRIMARY KEY (udid, tag));"
        "CREATE INDEX device_tags_tag ON device_tags(tag, udid);"
        "CREATE TABLE device_facts ("
        " udid TEXT PRIMARY KEY,"
        " supervised INTEGER NOT NULL DEFAULT -1,"
        " os_version TEXT NOT NULL DEFAULT '',"
        " eid TEXT NOT NULL DEFAULT '',"
        " iccid TEXT NOT NULL DEFAULT '',"
        " verified_ms INTEGER NOT NULL DEFAULT 0,"
        " updated_ms INTEGER NOT NULL DEFAULT 0);"},
    /* 5: one identity binds one device: find a certificate's device at once. */
    {5, "CREATE INDEX devices_cert ON devices(cert_sha256) WHERE cert_sha256 <> '';"},
    /* 6: NanoMDM's token_update_tally (TokenUpdates since the enrolment
     * began: 1 is the enrolment's own) and the macOS bootstrap token. */
    {6, "ALTER TABLE devices ADD COLUMN token_update_tally INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE devices ADD COLUMN bootstrap_token BLOB;"},
    /* 7: the audit log of admin actions (who, what, when, result). */
    {7, "CREATE TABLE audit ("
        " id INTEGER PRIMARY KEY,"
        " at INTEGER NOT NULL,"
        " who TEXT NOT NULL,"
        " role TEXT NOT NULL DEFAULT '',"
        " method TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " status INTEGER NOT NULL DEFAULT 0,"
        " detail TEXT NOT NULL DEFAULT '');"},
    /* 8: a device's platform ("apple", "windows"; Apple before there was a
     * choice), and the platform of each campaign device record. */
    {8, "ALTER TABLE devices ADD COLUMN platform TEXT NOT NULL DEFAULT 'apple';"
        "ALTER TABLE campaign_devices ADD COLUMN platform INTEGER NOT NULL DEFAULT 0;"},
    /* 9: webhook deliveries not yet answered 2xx, so a restart loses none. */
    {9, "CREATE TABLE webhook_outbox ("
        " id INTEGER PRIMARY KEY,"
        " url_key INTEGER NOT NULL,"
        " created_at INTEGER NOT NULL,"
        " body BLOB NOT NULL);"},
    /* 10: IoT eUICCs the eIM manages (SGP.32) and the packages signed for them. */
    {10, "CREATE TABLE iot_devices ("
         " eid TEXT PRIMARY KEY,"
         " state TEXT NOT NULL,"
         " association_token INTEGER NOT NULL DEFAULT 0,"
         " counter INTEGER NOT NULL DEFAULT 0,"
         " euicc_cert BLOB,"
         " last_poll_ms INTEGER NOT NULL DEFAULT 0,"
         " registered_ms INTEGER NOT NULL DEFAULT 0,"
         " updated_ms INTEGER NOT NULL DEFAULT 0,"
         " last_error TEXT NOT NULL DEFAULT '');"
         "CREATE TABLE iot_packages ("
         " id INTEGER PRIMARY KEY,"
         " command_uuid TEXT NOT NULL,"
         " eid TEXT NOT NULL,"
         " kind TEXT NOT NULL,"
         " state TEXT NOT NULL,"
         " counter INTEGER NOT NULL DEFAULT 0,"
         " created_ms INTEGER NOT NULL DEFAULT 0,"
         " sent_ms INTEGER NOT NULL DEFAULT 0,"
         " answered_ms INTEGER NOT NULL DEFAULT 0,"
         " summary TEXT NOT NULL DEFAULT '',"
         " result_words TEXT,"
         " error TEXT NOT NULL DEFAULT '',"
         " request BLOB,"
         " result BLOB,"
         " UNIQUE (command_uuid, eid));"
         "CREATE INDEX iot_packages_eid ON iot_packages(eid, id);"},
    /* Leases and outbox claims are PostgreSQL's (several instances); the
     * tables are the same in both back ends. */
    {11, "CREATE TABLE leases ("
         " name TEXT PRIMARY KEY,"
         " owner TEXT NOT NULL,"
         " expires_at INTEGER NOT NULL);"
         "ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';"
         "ALTER TABLE webhook_outbox ADD COLUMN claimed_until INTEGER NOT NULL DEFAULT 0;"},
    /* A campaign row's version, one more at every write: a pause, resume or
     * cancel from an instance that does not drive the campaign is a
     * compare-and-set on it (esim_store_campaign_set_state). */
    {12, "ALTER TABLE campaigns ADD COLUMN version INTEGER NOT NULL DEFAULT 1;"},
    /* 13: the eIM relays an indirect download only to the SM-DP+ of a
     * download trigger it delivered (smdp: "host:port" lowercased, '' for
     * other packages), and its relay sessions (transactionId -> SM-DP+) are
     * shared by the instances on one store. */
    {13, "ALTER TABLE iot_packages ADD COLUMN smdp TEXT NOT NULL DEFAULT '';"
         "CREATE INDEX iot_packages_smdp ON iot_packages(smdp, state) WHERE smdp <> '';"
         "CREATE TABLE iot_relay_sessions ("
         " txid TEXT PRIMARY KEY,"
         " smdp TEXT NOT NULL,"
         " eid TEXT NOT NULL DEFAULT '',"
         " created_ms INTEGER NOT NULL);"
         "CREATE INDEX iot_relay_sessions_created ON iot_relay_sessions(created_ms);"},
    /* 14: a campaign's pushes and commands over its whole life, written by
     * whichever instance holds its lease, so the one that takes it over
     * counts on from there (esim_store_campaign_totals). */
    {14, "ALTER TABLE campaigns ADD COLUMN pushes INTEGER NOT NULL DEFAULT 0;"
         "ALTER TABLE campaigns ADD COLUMN commands INTEGER NOT NULL DEFAULT 0;"},
    /* New migrations go here, with the next version number. */
};

/* ---- statements ------------------------------------------------------------ */

#define DEVICE_COLS                                                                                \
    "udid, is_enrollment_id, enrolled, topic, serial_number, os_version, build_version,"           \
    " product_name, model, device_name, imei, eid, cert_sha256, push_token, push_magic,"           \
    " push_state, enrolled_at, checked_out_at, token_updated_at, last_seen_at, push_due_at,"       \
    " token_update_tally, platform"

#define IOT_PKG_COLS                                                                               \
    "command_uuid, eid, kind, state, counter, created_ms, sent_ms, answered_ms, summary,"          \
    " result_words, error, request, result, smdp"

#define ENTRY_COLS                                                                                 \
    "q.udid, q.command_uuid, c.request_type, q.state, q.priority, q.attempts, q.not_now_count,"    \
    " q.enqueued_at, q.pushed_at, q.sent_at, q.answered_at, q.updated_at, q.expires_at,"           \
    " q.error_chain, q.result"

enum {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_SAVEPOINT,
    S_RELEASE,
    S_ROLLBACK_TO,
    S_DEV_IDENTITY,
    S_DEV_BY_CERT,
    S_DEV_AUTH_UPSERT,
    S_DEV_TOKEN,
    S_DEV_TALLY,
    S_DEV_CHECKOUT,
    S_DEV_SEEN,
    S_DEV_SEEN_VERIFIED,
    S_DEV_EID,
    S_DEV_GET,
    S_DEV_PUSH_TARGET,
    S_DEV_BRIEF,
    S_DEV_LIST,
    S_DEV_SEARCH,
    S_FLEET,
    S_DEV_PUSH_DUE_AT,
    S_DEV_PUSH_STATE,
    S_DEV_DUE_SELECT,
    S_DEV_DUE_CLEAR,
    S_Q_FIND,
    S_Q_ANSWER,
    S_Q_ANSWER_SENT,
    S_Q_NEXT,
    S_Q_MARK_SENT,
    S_Q_INSERT,
    S_Q_CANCEL_ALL_EVENTS,
    S_Q_CANCEL_ALL,
    S_Q_CANCEL_ONE,
    S_Q_PUSHED,
    S_Q_EXPIRE_EVENTS,
    S_Q_EXPIRE,
    S_Q_BY_COMMAND,
    S_Q_COUNT_BY_COMMAND,
    S_Q_ACTIVE_FOR_DEVICE,
    S_Q_DONE_FOR_DEVICE,
    S_CMD_INSERT,
    S_CMD_GET,
    S_EVENT,
    S_EVENTS_LIST,
    S_STATS_DEVICES,
    S_STATS_QUEUE,
    S_STATS_EVENTS,
    S_Q_LAST_SENT,
    S_Q_RETIRE,
    S_DEV_REENROLLED,
    S_EVENT_LATEST,
    S_CAMP_PUT,
    S_CAMP_CMD_PUT,
    S_CAMP_DEV_PUT,
    S_CAMP_LIST,
    S_CAMP_STATE_GET,
    S_CAMP_STATE_PUT,
    S_CAMP_TOTALS_PUT,
    S_CAMP_DEVS,
    S_CAMP_CMDS,
    S_MANIFEST_PUT,
    S_CODE_PUT,
    S_MANIFEST_GET,
    S_CODE_GET,
    S_GROUP_EXISTS,
    S_GROUP_CREATE,
    S_GROUP_DROP_MEMBERS,
    S_GROUP_DROP,
    S_GROUP_ADD,
    S_GROUP_REMOVE,
    S_GROUPS_LIST,
    S_GROUP_MEMBERS,
    S_TAG_DEVICES,
    S_DEVICE_TAGS,
    S_TAG_ADD,
    S_TAG_REMOVE,
    S_FACTS_PUT,
    S_FACTS_GET,
    S_DEV_BIND_CERT,
    S_DEV_BOOTSTRAP_SET,
    S_DEV_BOOTSTRAP_GET,
    S_AUDIT_ADD,
    S_AUDIT_LIST,
    S_OUTBOX_ADD,
    S_OUTBOX_DEL,
    S_OUTBOX_LIST,
    S_IOT_GET,
    S_IOT_PUT,
    S_IOT_LIST,
    S_IOT_PKG_PUT,
    S_IOT_PKG_LIST,
    S_IOT_PKG_ONE,
    S_IOT_PKG_BY_COMMAND,
    S_IOT_TRIGGER_FIND,
    S_IOT_TRIGGER_ANY,
    S_IOT_TRIGGER_ANY_SENT,
    S_RELAY_PUT,
    S_RELAY_EXPIRE,
    S_RELAY_GET,
    S_RELAY_DROP,
    S_CAMP_DEV_UPDATE,
    S_COUNT
};

_Static_assert(S_COUNT <= 256, "statement ids are kept in unsigned chars");

static const char *const statement_sql[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SAVEPOINT] = "SAVEPOINT op",
    [S_RELEASE] = "RELEASE op",
    [S_ROLLBACK_TO] = "ROLLBACK TO op",
    [S_DEV_IDENTITY] =
        "SELECT enrolled, cert_sha256, enrolled_at, serial_number FROM devices WHERE udid = ?1",
    /* "<> ''" lets the planner use the partial index devices_cert: a
     * bound value alone does not prove it, and without it every
     * Authenticate scanned the whole table (O(fleet) per enrolment). */
    [S_DEV_BY_CERT] = "SELECT udid FROM devices WHERE cert_sha256 = ?1 AND cert_sha256 <> ''"
                      " AND udid <> ?2 LIMIT 1",
    [S_DEV_AUTH_UPSERT] =
        "INSERT INTO devices (udid, is_enrollment_id, enrolled, topic, serial_number, os_version,"
        " build_version, product_name, model, device_name, imei, cert_sha256, push_token,"
        " push_magic, push_state, enrolled_at, last_seen_at, platform)"
        " VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, '', '', 'none', ?12, ?12, ?14)"
        " ON CONFLICT (udid) DO UPDATE SET is_enrollment_id = excluded.is_enrollment_id,"
        " enrolled = 1, topic = excluded.topic,"
        " serial_number = CASE WHEN excluded.serial_number <> '' THEN excluded.serial_number ELSE "
        "devices.serial_number END,"
        " os_version = CASE WHEN excluded.os_version <> '' THEN excluded.os_version ELSE "
        "devices.os_version END,"
        " build_version = CASE WHEN excluded.build_version <> '' THEN excluded.build_version ELSE "
        "devices.build_version END,"
        " product_name = CASE WHEN excluded.product_name <> '' THEN excluded.product_name ELSE "
        "devices.product_name END,"
        " model = CASE WHEN excluded.model <> '' THEN excluded.model ELSE devices.model END,"
        " device_name = CASE WHEN excluded.device_name <> '' THEN excluded.device_name ELSE "
        "devices.device_name END,"
        " imei = CASE WHEN excluded.imei <> '' THEN excluded.imei ELSE devices.imei END,"
        " cert_sha256 = excluded.cert_sha256,"
        " push_token = CASE WHEN ?13 THEN devices.push_token ELSE '' END,"
        " push_magic = CASE WHEN ?13 THEN devices.push_magic ELSE '' END,"
        " push_state = CASE WHEN ?13 THEN devices.push_state ELSE 'none' END,"
        " token_update_tally = 0,"
        " enrolled_at = CASE WHEN devices.enrolled = 1 THEN devices.enrolled_at ELSE "
        "excluded.enrolled_at END,"
        " last_seen_at = excluded.last_seen_at, platform = excluded.platform",
    [S_DEV_TOKEN] = "UPDATE devices SET topic = ?2, push_token = ?3, push_magic = ?4,"
                    " push_state = 'valid', token_updated_at = ?5, last_seen_at = ?5,"
                    " token_update_tally = token_update_tally + 1 WHERE udid = ?1",
    /* Read after S_DEV_TOKEN: with RETURNING that UPDATE cost ≈ 30,000
     * instructions more (its ephemeral table and reset), this ≈ 5,000. */
    [S_DEV_TALLY] = "SELECT token_update_tally FROM devices WHERE udid = ?1",
    [S_DEV_CHECKOUT] = "UPDATE devices SET enrolled = 0, push_token = '', push_magic = '',"
                       " push_state = 'none', push_due_at = 0, checked_out_at = ?2,"
                       " token_update_tally = 0,"
                       " last_seen_at = ?2 WHERE udid = ?1",
    [S_DEV_SEEN] = "UPDATE devices SET last_seen_at = ?2 WHERE udid = ?1",
    /* check_identity's conditions for a request that passes as it is. */
    [S_DEV_SEEN_VERIFIED] =
        "UPDATE devices SET last_seen_at = ?2, eid = coalesce(?4, eid) WHERE udid = ?1"
        " AND enrolled = 1 AND (?3 = '' OR (cert_sha256 <> '' AND cert_sha256 = ?3))",
    [S_DEV_EID] = "UPDATE devices SET eid = ?2 WHERE udid = ?1",
    [S_DEV_GET] = "SELECT " DEVICE_COLS " FROM devices WHERE udid = ?1",
    [S_DEV_PUSH_TARGET] = "SELECT udid, topic, push_token, push_magic, push_state, enrolled,"
                          " platform FROM devices WHERE udid = ?1",
    [S_DEV_BRIEF] = "SELECT enrolled, serial_number, os_version, eid, platform FROM devices"
                    " WHERE udid = ?1",
    [S_DEV_LIST] = "SELECT " DEVICE_COLS " FROM devices WHERE udid > ?1 ORDER BY udid LIMIT ?2",
    [S_DEV_SEARCH] = "SELECT " DEVICE_COLS " FROM devices WHERE udid > ?1 AND"
                     " (instr(lower(udid), ?3) OR instr(lower(serial_number), ?3) OR"
                     " instr(lower(device_name), ?3) OR instr(lower(product_name), ?3) OR"
                     " instr(lower(eid), ?3)) ORDER BY udid LIMIT ?2",
    [S_FLEET] = "SELECT d.product_name, d.model, d.enrolled, d.push_state,"
                " coalesce(f.verified_ms, 0) > 0, count(*), d.platform FROM devices d"
                " LEFT JOIN device_facts f ON f.udid = d.udid GROUP BY 1, 2, 3, 4, 5, 7",
    [S_DEV_PUSH_DUE_AT] = "UPDATE devices SET push_due_at = ?2 WHERE udid = ?1"
                          " AND (push_due_at = 0 OR push_due_at > ?2)",
    [S_DEV_PUSH_STATE] = "UPDATE devices SET push_state = ?2, push_due_at = 0 WHERE udid = ?1",
    [S_DEV_DUE_SELECT] = "SELECT udid FROM devices WHERE push_due_at > 0 AND push_due_at <= ?1"
                         " ORDER BY push_due_at LIMIT ?2",
    /* A row with nothing owed is left as it is, not written again (a
     * pushed device is nearly always one: ≈ 10,000 instructions a push). */
    [S_DEV_DUE_CLEAR] = "UPDATE devices SET push_due_at = 0 WHERE udid = ?1 AND push_due_at <> 0",
    [S_Q_FIND] = "SELECT id, state FROM queue WHERE udid = ?1 AND command_uuid = ?2",
    [S_Q_ANSWER] =
        "UPDATE queue SET state = ?2, active = ?3, answered_at = ?4, updated_at = ?4,"
        " not_now_count = not_now_count + ?5, error_chain = ?6, result = ?7 WHERE id = ?1",
    [S_Q_ANSWER_SENT] =
        "UPDATE queue SET state = ?3, active = ?4, answered_at = ?5, updated_at = ?5,"
        " not_now_count = not_now_count + ?6, error_chain = ?7, result = ?8"
        " WHERE udid = ?1 AND command_uuid = ?2 AND state = 'sent'",
    [S_Q_NEXT] = "SELECT q.id, q.command_uuid, c.request_type, c.body FROM queue q"
                 " JOIN commands c ON c.uuid = q.command_uuid"
                 " WHERE q.udid = ?1 AND q.active = 1 AND (q.expires_at = 0 OR q.expires_at > ?2)"
                 " ORDER BY q.priority DESC, q.id LIMIT ?3",
    [S_Q_MARK_SENT] = "UPDATE queue SET state = 'sent', attempts = attempts + 1, sent_at = ?2,"
                      " updated_at = ?2 WHERE id = ?1",
    [S_Q_INSERT] = "INSERT INTO queue (udid, command_uuid, priority, expires_at, state, active,"
                   " enqueued_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'queued', 1, ?5, ?5)",
    [S_Q_CANCEL_ALL_EVENTS] = "INSERT INTO events (at, kind, udid, command_uuid, detail)"
                              " SELECT ?2, ?4, udid, command_uuid, ?3 FROM queue"
                              " WHERE udid = ?1 AND active = 1",
    [S_Q_CANCEL_ALL] = "UPDATE queue SET state = 'canceled', active = 0, updated_at = ?2"
                       " WHERE udid = ?1 AND active = 1",
    [S_Q_CANCEL_ONE] =
        "UPDATE queue SET state = 'canceled', active = 0, updated_at = ?2 WHERE id = ?1",
    [S_Q_PUSHED] = "UPDATE queue SET state = 'pushed', pushed_at = ?2, updated_at = ?2"
                   " WHERE udid = ?1 AND active = 1 AND state IN ('queued', 'not_now')",
    [S_Q_EXPIRE_EVENTS] = "INSERT INTO events (at, kind, udid, command_uuid)"
                          " SELECT ?1, ?2, udid, command_uuid FROM queue"
                          " WHERE active = 1 AND expires_at > 0 AND expires_at <= ?1",
    [S_Q_EXPIRE] = "UPDATE queue SET state = 'expired', active = 0, updated_at = ?1"
                   " WHERE active = 1 AND expires_at > 0 AND expires_at <= ?1",
    [S_Q_BY_COMMAND] =
        "SELECT " ENTRY_COLS " FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.command_uuid = ?1 AND q.udid > ?2 ORDER BY q.udid LIMIT ?3",
    [S_Q_COUNT_BY_COMMAND] =
        "SELECT state, count(*) FROM queue WHERE command_uuid = ?1 GROUP BY state",
    [S_Q_ACTIVE_FOR_DEVICE] =
        "SELECT " ENTRY_COLS " FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.udid = ?1 AND q.active = 1 ORDER BY q.priority DESC, q.id",
    [S_Q_DONE_FOR_DEVICE] =
        "SELECT " ENTRY_COLS " FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.udid = ?1 AND q.active = 0 ORDER BY q.id DESC LIMIT 100",
    [S_CMD_INSERT] =
        "INSERT INTO commands (uuid, request_type, body, priority, created_at, expires_at)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_CMD_GET] =
        "SELECT uuid, request_type, priority, created_at, expires_at FROM commands WHERE uuid = ?1",
    [S_IOT_GET] = "SELECT eid, state, association_token, counter, last_poll_ms, registered_ms, "
                  "updated_ms, last_error, euicc_cert FROM iot_devices WHERE eid = ?1",
    [S_IOT_PUT] =
        "INSERT INTO iot_devices (eid, state, association_token, counter, last_poll_ms, "
        "registered_ms, updated_ms, last_error, euicc_cert) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,"
        " ?8, ?9) ON CONFLICT (eid) DO UPDATE SET state = excluded.state,"
        " association_token = excluded.association_token, counter = excluded.counter,"
        " last_poll_ms = excluded.last_poll_ms, registered_ms = excluded.registered_ms,"
        " updated_ms = excluded.updated_ms, last_error = excluded.last_error,"
        " euicc_cert = excluded.euicc_cert",
    [S_IOT_LIST] = "SELECT eid, state, association_token, counter, last_poll_ms, registered_ms, "
                   "updated_ms, last_error FROM iot_devices WHERE eid > ?1 ORDER BY eid LIMIT ?2",
    [S_IOT_PKG_PUT] =
        "INSERT INTO iot_packages (command_uuid, eid, kind, state, counter, created_ms, sent_ms, "
        "answered_ms, summary, result_words, error, request, result, smdp) VALUES (?1, ?2, ?3, ?4, "
        "?5, "
        "?6, ?7, ?8, ?9, ?10,"
        " ?11, ?12, ?13, ?14) ON CONFLICT (command_uuid, eid) DO UPDATE SET kind = excluded.kind,"
        " state = excluded.state, counter = excluded.counter, sent_ms = excluded.sent_ms,"
        " answered_ms = excluded.answered_ms, summary = excluded.summary,"
        " result_words = excluded.result_words, error = excluded.error,"
        " request = excluded.request, result = excluded.result,"
        " smdp = CASE WHEN excluded.smdp = '' THEN iot_packages.smdp ELSE excluded.smdp END",
    /* The packages of one EID, of one command, or the one of both: a
     * statement for each, every one by an index. The one statement with
     * "(?1 = '' OR eid = ?1) AND (?2 = '' OR command_uuid = ?2)" could use
     * neither index and read the whole table, every package's request and
     * result with it, for each eIM result (find_sent). */
    [S_IOT_PKG_LIST] = "SELECT " IOT_PKG_COLS " FROM iot_packages WHERE eid = ?1"
                       " ORDER BY id DESC LIMIT ?2",
    [S_IOT_PKG_ONE] = "SELECT " IOT_PKG_COLS " FROM iot_packages WHERE command_uuid = ?1"
                      " AND eid = ?2 ORDER BY id DESC LIMIT ?3",
    [S_IOT_PKG_BY_COMMAND] = "SELECT " IOT_PKG_COLS " FROM iot_packages WHERE command_uuid = ?1"
                             " ORDER BY id DESC LIMIT ?2",
    /* With an EID, its packages by iot_packages_eid ("+smdp" keeps the
     * planner off iot_packages_smdp: one SM-DP+ may serve the whole fleet);
     * without, iot_packages_smdp, which "smdp <> ''" lets the planner use
     * (a bound value alone does not prove the index's condition; "ORDER BY
     * state", the index's order, keeps PostgreSQL's planner on it too: only
     * download triggers have an SM-DP+, so its first entry answers, where a
     * scan of the table may first pass every other package). */
    [S_IOT_TRIGGER_FIND] = "SELECT 1 FROM iot_packages WHERE eid = ?1 AND +smdp = ?2"
                           " AND kind = 'download' AND (?3 = 0 OR state = 'sent') LIMIT 1",
    [S_IOT_TRIGGER_ANY] = "SELECT 1 FROM iot_packages WHERE smdp = ?1 AND smdp <> ''"
                          " AND kind = 'download' ORDER BY state LIMIT 1",
    [S_IOT_TRIGGER_ANY_SENT] = "SELECT 1 FROM iot_packages WHERE smdp = ?1 AND smdp <> ''"
                               " AND state = 'sent' AND kind = 'download' LIMIT 1",
    [S_RELAY_PUT] = "INSERT INTO iot_relay_sessions (txid, smdp, eid, created_ms) VALUES (?1, ?2,"
                    " ?3, ?4) ON CONFLICT (txid) DO UPDATE SET smdp = excluded.smdp,"
                    " eid = excluded.eid, created_ms = excluded.created_ms",
    [S_RELAY_EXPIRE] = "DELETE FROM iot_relay_sessions WHERE created_ms < ?1",
    [S_RELAY_GET] = "SELECT smdp, eid, created_ms FROM iot_relay_sessions WHERE txid = ?1",
    [S_RELAY_DROP] = "DELETE FROM iot_relay_sessions WHERE txid = ?1",
    [S_OUTBOX_ADD] = "INSERT INTO webhook_outbox (url_key, created_at, body, claimed_by,"
                     " claimed_until) VALUES (?1, ?2, ?3, ?4, ?5)",
    [S_OUTBOX_DEL] = "DELETE FROM webhook_outbox WHERE id = ?1",
    [S_OUTBOX_LIST] = "SELECT id, url_key, created_at, body FROM webhook_outbox WHERE id > ?1"
                      " ORDER BY id LIMIT ?2",
    [S_EVENT] = "INSERT INTO events (at, kind, udid, command_uuid, detail, raw) VALUES (?1, ?2, "
                "?3, ?4, ?5, ?6)",
    [S_AUDIT_ADD] = "INSERT INTO audit (at, who, role, method, target, status, detail)"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [S_AUDIT_LIST] = "SELECT id, at, who, role, method, target, status, detail FROM audit"
                     " WHERE id > ?1 ORDER BY id LIMIT ?2",
    [S_EVENTS_LIST] = "SELECT id, at, kind, udid, command_uuid, detail, raw FROM events"
                      " WHERE udid = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
    [S_STATS_DEVICES] =
        "SELECT count(*), coalesce(sum(enrolled), 0),"
        " coalesce(sum(CASE WHEN enrolled = 1 AND push_state = 'valid' THEN 1 ELSE 0 END), 0)"
        " FROM devices",
    [S_STATS_QUEUE] = "SELECT state, count(*) FROM queue GROUP BY state",
    [S_STATS_EVENTS] = "SELECT coalesce(max(id), 0) FROM events",
    [S_Q_LAST_SENT] =
        "SELECT q.id, q.sent_at FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.udid = ?1 AND c.request_type = ?3"
        " AND q.state IN ('sent', 'acknowledged') AND q.sent_at >= ?2"
        " ORDER BY q.sent_at DESC LIMIT 1",
    [S_Q_RETIRE] = "UPDATE queue SET active = 0, updated_at = ?2 WHERE id = ?1",
    [S_DEV_REENROLLED] = "UPDATE devices SET enrolled_at = ?2 WHERE udid = ?1",
    [S_EVENT_LATEST] = "SELECT id, at, kind, udid, command_uuid, detail FROM events"
                       " WHERE udid = ?1 AND kind IN (?2, ?3, ?4, ?5) ORDER BY id DESC LIMIT 1",
    [S_CAMP_PUT] = "INSERT INTO campaigns (id, name, definition, state, created_ms, updated_ms)"
                   " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE SET"
                   " definition = excluded.definition, state = excluded.state,"
                   " updated_ms = excluded.updated_ms, version = campaigns.version + 1",
    [S_CAMP_CMD_PUT] = "INSERT INTO campaign_commands (uuid, campaign, step) VALUES (?1, ?2, ?3)"
                       " ON CONFLICT (uuid) DO UPDATE SET campaign = excluded.campaign,"
                       " step = excluded.step",
    [S_CAMP_DEV_PUT] =
        "INSERT INTO campaign_devices (campaign, idx, udid, eid, iccid, state, step, retries,"
        " verify_tries, flags, pushes, not_now, changed_ms, next_ms, deadline_ms, last_push_ms,"
        " push_state, command_uuid, reason, platform) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
        " ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        " ON CONFLICT (campaign, idx) DO UPDATE SET platform = excluded.platform,"
        " udid = excluded.udid, eid = excluded.eid, iccid = excluded.iccid,"
        " state = excluded.state, step = excluded.step, retries = excluded.retries,"
        " verify_tries = excluded.verify_tries, flags = excluded.flags,"
        " pushes = excluded.pushes, not_now = excluded.not_now,"
        " changed_ms = excluded.changed_ms, next_ms = excluded.next_ms,"
        " deadline_ms = excluded.deadline_ms, last_push_ms = excluded.last_push_ms,"
        " push_state = excluded.push_state, command_uuid = excluded.command_uuid,"
        " reason = excluded.reason",
    /* A record already in the store under the same UDID: every column but
     * the key and the UDID, so the UDID's index entry stays as it is. */
    [S_CAMP_DEV_UPDATE] =
        "UPDATE campaign_devices SET eid = ?4, iccid = ?5, state = ?6, step = ?7, retries = ?8,"
        " verify_tries = ?9, flags = ?10, pushes = ?11, not_now = ?12, changed_ms = ?13,"
        " next_ms = ?14, deadline_ms = ?15, last_push_ms = ?16, push_state = ?17,"
        " command_uuid = ?18, reason = ?19, platform = ?20"
        " WHERE campaign = ?1 AND idx = ?2 AND udid = ?3",
    [S_CAMP_LIST] = "SELECT id, name, definition, state, created_ms, updated_ms, version,"
                    " pushes, commands"
                    " FROM campaigns ORDER BY created_ms, id",
    [S_CAMP_STATE_GET] = "SELECT state, version FROM campaigns WHERE id = ?1",
    [S_CAMP_STATE_PUT] = "UPDATE campaigns SET state = ?2, updated_ms = ?3,"
                         " version = version + 1 WHERE id = ?1",
    /* Not a change of the row's state: its version stays. */
    [S_CAMP_TOTALS_PUT] = "UPDATE campaigns SET pushes = ?2, commands = ?3 WHERE id = ?1",
    [S_CAMP_DEVS] =
        "SELECT idx, udid, eid, iccid, state, step, retries, verify_tries, flags, pushes,"
        " not_now, changed_ms, next_ms, deadline_ms, last_push_ms, push_state, command_uuid,"
        " reason, platform FROM campaign_devices WHERE campaign = ?1 ORDER BY idx",
    [S_CAMP_CMDS] = "SELECT uuid, step FROM campaign_commands WHERE campaign = ?1 ORDER BY id",
    [S_MANIFEST_PUT] = "INSERT INTO eid_manifest (serial, eid, imported_ms) VALUES (?1, ?2, ?3)"
                       " ON CONFLICT (serial) DO UPDATE SET eid = excluded.eid,"
                       " imported_ms = excluded.imported_ms",
    [S_CODE_PUT] =
        "INSERT INTO activation_codes (eid, code, smdp, matching_id, iccid, imported_ms)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (eid) DO UPDATE SET code = excluded.code,"
        " smdp = excluded.smdp, matching_id = excluded.matching_id, iccid = excluded.iccid,"
        " imported_ms = excluded.imported_ms",
    [S_MANIFEST_GET] = "SELECT eid FROM eid_manifest WHERE serial = ?1",
    [S_CODE_GET] = "SELECT iccid, matching_id FROM activation_codes WHERE eid = ?1",
    [S_GROUP_EXISTS] = "SELECT 1 FROM device_groups WHERE name = ?1",
    [S_GROUP_CREATE] = "INSERT INTO device_groups (name, created_ms) VALUES (?1, ?2)",
    [S_GROUP_DROP_MEMBERS] = "DELETE FROM device_group_members WHERE grp = ?1",
    [S_GROUP_DROP] = "DELETE FROM device_groups WHERE name = ?1",
    [S_GROUP_ADD] = "INSERT INTO device_group_members (grp, udid) VALUES (?1, ?2)"
                    " ON CONFLICT (grp, udid) DO NOTHING",
    [S_GROUP_REMOVE] = "DELETE FROM device_group_members WHERE grp = ?1 AND udid = ?2",
    [S_GROUPS_LIST] = "SELECT g.name, (SELECT count(*) FROM device_group_members m"
                      " WHERE m.grp = g.name) FROM device_groups g ORDER BY g.name",
    [S_GROUP_MEMBERS] = "SELECT udid FROM device_group_members WHERE grp = ?1 ORDER BY udid",
    [S_TAG_DEVICES] = "SELECT udid FROM device_tags WHERE tag = ?1 ORDER BY udid",
    [S_DEVICE_TAGS] = "SELECT tag FROM device_tags WHERE udid = ?1 ORDER BY tag",
    [S_TAG_ADD] = "INSERT INTO device_tags (udid, tag) VALUES (?1, ?2)"
                  " ON CONFLICT (udid, tag) DO NOTHING",
    [S_TAG_REMOVE] = "DELETE FROM device_tags WHERE udid = ?1 AND tag = ?2",
    [S_FACTS_PUT] =
        "INSERT INTO device_facts (udid, supervised, os_version, eid, iccid, verified_ms,"
        " updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (udid) DO UPDATE SET"
        " supervised = CASE WHEN excluded.supervised >= 0 THEN excluded.supervised"
        " ELSE device_facts.supervised END,"
        " os_version = CASE WHEN excluded.os_version <> '' THEN excluded.os_version"
        " ELSE device_facts.os_version END,"
        " eid = CASE WHEN excluded.eid <> '' THEN excluded.eid ELSE device_facts.eid END,"
        " iccid = CASE WHEN excluded.eid <> '' THEN excluded.iccid ELSE device_facts.iccid END,"
        " verified_ms = CASE WHEN excluded.verified_ms > 0 THEN excluded.verified_ms"
        " ELSE device_facts.verified_ms END, updated_ms = excluded.updated_ms",
    [S_FACTS_GET] = "SELECT supervised, os_version, eid, iccid, verified_ms, updated_ms"
                    " FROM device_facts WHERE udid = ?1",
    [S_DEV_BIND_CERT] = "UPDATE devices SET cert_sha256 = ?2 WHERE udid = ?1",
    [S_DEV_BOOTSTRAP_SET] = "UPDATE devices SET bootstrap_token = ?2 WHERE udid = ?1",
    [S_DEV_BOOTSTRAP_GET] = "SELECT bootstrap_token FROM devices WHERE udid = ?1",
};

typedef struct {
    store base;
    sqlite3 *db;
    sqlite3_stmt *stmt[S_COUNT];
    store_sync sync;
    bool in_batch; /* operations are savepoints inside one transaction */
    /* An operation begun with op_begin_checked directly in the batch, with
     * no savepoint, and the store's change count when it began. */
    bool unsaved;
    int64_t unsaved_changes;
    bool batch_broken; /* such an operation failed after it wrote, or SQLite
                        * rolled the whole batch back by itself: the batch
                        * cannot commit */
    /* A failure's words are kept in base.last_error from the first failure
     * of an outermost operation (or of a batch) until the next one begins:
     * the undo's own failures that follow (a RELEASE of a savepoint SQLite
     * already dropped) would hide what went wrong. */
    bool failure_kept;
    int depth;      /* operations begun and not ended (they nest) */
    char *wal_path; /* "<db>-wal", fsynced by sq_sync in group mode */
    int wal_fd;     /* opened once the log exists (group mode) */
    /* The statements taken since the last operation ended: the ones its end
     * resets (not all of them: an exchange uses about ten of ninety). */
    bool used[S_COUNT];
    unsigned char used_ids[S_COUNT];
    int n_used;
} sqlite_store;

/* After SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM or SQLITE_BUSY in a
 * statement SQLite may roll back the whole transaction by itself, and
 * with it every savepoint. Inside a batch that is the batch undone: its
 * later operations must not run (a SAVEPOINT outside a transaction would
 * begin one of its own and its RELEASE commit it, outside the batch). */
static bool batch_lost(const sqlite_store *s)
{
    return s->in_batch && sqlite3_get_autocommit(s->db);
}

/* What SQLite's error log (SQLITE_CONFIG_LOG) last said on this thread, and
 * the code it said it with: the detail its error message leaves out (the
 * step of the statement that failed, the file and system call of an I/O
 * error). Per thread because SQLite calls the log on the thread that hit
 * the error, before that call returns. */
static _Thread_local struct {
    int code;
    char msg[160];
} sqlite_said;

static void sqlite_log(void *arg, int code, const char *msg)
{
    (void)arg;
    sqlite_said.code = code;
    snprintf(sqlite_said.msg, sizeof sqlite_said.msg, "%s", msg ? msg : "");
}

static esim_err db_fail(sqlite_store *s, esim_error *err, const char *what)
{
    char words[sizeof s->base.last_error];
    int code = sqlite3_extended_errcode(s->db);
    int primary = code & 0xff, sys = sqlite3_system_errno(s->db);
    /* A failure of the file system (a full disk, a write refused) says
     * which: SQLite's words alone are "database or disk is full". */
    char detail[200] = "";
    if (sys != 0 &&
        (primary == SQLITE_FULL || primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN))
        snprintf(detail, sizeof detail, "; %s", strerror(sys));
    /* What SQLite's log said of it, up to the statement's text. */
    if ((sqlite_said.code & 0xff) == primary && sqlite_said.msg[0]) {
        int n = (int)strcspn(sqlite_said.msg, "[");
        while (n > 0 && (sqlite_said.msg[n - 1] == ' ' || sqlite_said.msg[n - 1] == ':'))
            n--;
        snprintf(detail + strlen(detail), sizeof detail - strlen(detail), "; sqlite: %.*s", n,
                 sqlite_said.msg);
    }
    sqlite_said.code = 0;
    /* A statement's text is long: its start names it, and the words must
     * keep room for the rest. */
    snprintf(words, sizeof words, "store (sqlite): %.80s%s: %s (%d%s)", what,
             strlen(what) > 80 ? "..." : "", sqlite3_errmsg(s->db), code, detail);
    bool in_tx = s->in_batch || s->depth > 0;
    if (!in_tx || !s->failure_kept)
        memcpy(s->base.last_error, words, sizeof words);
    s->failure_kept = in_tx;
    if (batch_lost(s))
        s->batch_broken = true;
    return esim_fail(err, ESIM_ESTORE, "%s", words);
}

/* The answer to an operation that meets its batch already undone by
 * SQLite (batch_lost), with the failure that undid it. */
static esim_err batch_undone(sqlite_store *s, esim_error *err)
{
    s->batch_broken = true;
    return esim_fail(err, ESIM_ESTORE, "store (sqlite): the batch was undone by %s",
                     s->base.last_error[0] ? s->base.last_error : "SQLite");
}

/* The cached statement |id|, reset and with its bindings cleared. */
static sqlite3_stmt *stmt_get(sqlite_store *s, int id, esim_error *err)
{
    if (!s->used[id]) {
        s->used[id] = true;
        s->used_ids[s->n_used++] = (unsigned char)id;
    }
    if (!s->stmt[id]) {
        if (sqlite3_prepare_v3(s->db, statement_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                               &s->stmt[id], NULL) != SQLITE_OK) {
            db_fail(s, err, "prepare");
            return NULL;
        }
    } else {
        sqlite3_reset(s->stmt[id]);
        sqlite3_clear_bindings(s->stmt[id]);
    }
    return s->stmt[id];
}

/*
 * Binds parameters 1.. from |fmt|: 't' text (NULL binds SQL NULL), 'T' text
 * (NULL binds ''), 'i' int64, 'b' blob (pointer, size_t; NULL binds NULL).
 */
static int bind_args(sqlite3_stmt *st, const char *fmt, va_list ap)
{
    int rc = SQLITE_OK;
    for (int i = 1; *fmt && rc == SQLITE_OK; fmt++, i++) {
        switch (*fmt) {
        case 't': {
            const char *v = va_arg(ap, const char *);
            rc = v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
            break;
        }
        case 'T': {
            const char *v = va_arg(ap, const char *);
            rc = sqlite3_bind_text(st, i, v ? v : "", -1, SQLITE_STATIC);
            break;
        }
        case 'i':
            rc = sqlite3_bind_int64(st, i, va_arg(ap, int64_t));
            break;
        case 'b': {
            const void *v = va_arg(ap, const void *);
            size_t n = va_arg(ap, size_t);
            rc = v ? sqlite3_bind_blob64(st, i, v, n, SQLITE_STATIC) : sqlite3_bind_null(st, i);
            break;
        }
        default:
            rc = SQLITE_MISUSE;
        }
    }
    return rc;
}

/* Prepares |id|, binds, and steps once. Returns the step code (SQLITE_ROW,
 * SQLITE_DONE) or -1 with |err| set. */
static int run(sqlite_store *s, esim_error *err, int id, const char *fmt, ...)
{
    sqlite3_stmt *st = stmt_get(s, id, err);
    if (!st)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    int rc = bind_args(st, fmt, ap);
    va_end(ap);
    if (rc != SQLITE_OK) {
        db_fail(s, err, "bind");
        return -1;
    }
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        db_fail(s, err, statement_sql[id]);
        sqlite3_reset(st);
        return -1;
    }
    return rc;
}

/* An operation is a transaction of its own, or a savepoint inside the open
 * batch or the enclosing operation: either way it happens whole or not at
 * all. */
static bool tx_nested(const sqlite_store *s)
{
    return s->in_batch || s->depth > 0;
}

static esim_err tx_begin(sqlite_store *s, esim_error *err)
{
    if (!tx_nested(s))
        s->failure_kept = false; /* a new outermost operation: its first failure is kept */
    if (batch_lost(s))
        return batch_undone(s, err);
    if (run(s, err, tx_nested(s) ? S_SAVEPOINT : S_BEGIN, "") != SQLITE_DONE)
        return ESIM_ESTORE;
    s->depth++;
    return ESIM_OK;
}

static void tx_undo(sqlite_store *s)
{
    if (batch_lost(s))
        return; /* SQLite undid it, savepoints and all */
    if (tx_nested(s)) {
        run(s, NULL, S_ROLLBACK_TO, "");
        run(s, NULL, S_RELEASE, "");
    } else if (sqlite3_get_autocommit(s->db) == 0) {
        run(s, NULL, S_ROLLBACK, "");
    }
}

/* Resets the statements taken since the last reset (a statement left on a
 * row would keep its read open); the others are reset already. */
static void reset_used(sqlite_store *s)
{
    for (int k = 0; k < s->n_used; k++) {
        int i = s->used_ids[k];
        s->used[i] = false;
        if (i >= S_DEV_IDENTITY && s->stmt[i])
            sqlite3_reset(s->stmt[i]);
    }
    s->n_used = 0;
}

/* Ends an operation: commit (or release) when |rc| is ESIM_OK, undo it
 * otherwise. Statements left on a row are reset first so no read outlives
 * it. */
static esim_err tx_end(sqlite_store *s, esim_err rc, esim_error *err)
{
    reset_used(s);
    s->depth--;
    if (s->unsaved && s->depth == 0) {
        s->unsaved = false;
        /* A refusal before any write leaves the batch as it was; anything
         * else (the store failed, maybe half-way) cannot be undone alone. */
        if (rc != ESIM_OK &&
            (rc == ESIM_ESTORE || sqlite3_total_changes64(s->db) != s->unsaved_changes))
            s->batch_broken = true;
        return rc;
    }
    if (rc == ESIM_OK) {
        if (batch_lost(s)) /* a failure this operation let pass undid the batch */
            return batch_undone(s, err);
        if (run(s, err, tx_nested(s) ? S_RELEASE : S_COMMIT, "") == SQLITE_DONE)
            return ESIM_OK;
        rc = ESIM_ESTORE;
    }
    tx_undo(s);
    return rc;
}

static esim_err sq_batch_begin(store *base, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    if (s->in_batch || s->depth > 0)
        return ESIM_OK;
    s->failure_kept = false;
    if (run(s, err, S_BEGIN, "") != SQLITE_DONE)
        return ESIM_ESTORE;
    s->in_batch = true;
    s->batch_broken = false;
    return ESIM_OK;
}

/* Directly in the batch, an operation whose refusals come before its
 * writes takes no savepoint (SAVEPOINT, RELEASE and the sub-journal's copy
 * of every page it touches: ≈ 9,000 instructions per operation); see
 * tx_end for what a failure does. */
static esim_err sq_op_begin_checked(store *base, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    if (!s->in_batch || s->depth > 0 || s->batch_broken || sqlite3_get_autocommit(s->db))
        return tx_begin(s, err);
    s->unsaved = true;
    s->unsaved_changes = sqlite3_total_changes64(s->db);
    s->depth++;
    return ESIM_OK;
}

static void sq_batch_rollback(store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    if (!s->in_batch)
        return;
    s->in_batch = false;
    s->batch_broken = false;
    reset_used(s);
    if (sqlite3_get_autocommit(s->db) == 0)
        run(s, NULL, S_ROLLBACK, "");
}

static esim_err sq_batch_commit(store *base, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    if (!s->in_batch)
        return ESIM_OK;
    s->in_batch = false;
    reset_used(s);
    if (s->batch_broken) {
        s->batch_broken = false;
        if (sqlite3_get_autocommit(s->db) == 0)
            run(s, NULL, S_ROLLBACK, "");
        return esim_fail(err, ESIM_ESTORE,
                         "store (sqlite): an operation of the batch failed after it wrote; "
                         "the batch is undone (%s)",
                         s->base.last_error[0] ? s->base.last_error : "no words");
    }
    if (run(s, err, S_COMMIT, "") == SQLITE_DONE)
        return ESIM_OK;
    if (sqlite3_get_autocommit(s->db) == 0)
        run(s, NULL, S_ROLLBACK, "");
    return ESIM_ESTORE;
}

static void col_text(sqlite3_stmt *st, int col, char *out, size_t out_len)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    esim_copy_text(out, out_len, v ? (const char *)v : "");
}

/* A push_state column ("valid", "dead", anything else: none). */
static store_push_state col_push_state(sqlite3_stmt *st, int col)
{
    const char *ps = (const char *)sqlite3_column_text(st, col);
    return ps && strcmp(ps, "valid") == 0  ? STORE_PUSH_VALID
           : ps && strcmp(ps, "dead") == 0 ? STORE_PUSH_DEAD
                                           : STORE_PUSH_NONE;
}

/* A device's platform column: empty on rows from before there was one,
 * which were Apple's. */
static void col_platform(sqlite3_stmt *st, int col, char *out, size_t out_len)
{
    col_text(st, col, out, out_len);
    if (!out[0])
        snprintf(out, out_len, "apple");
}

/* One statement that returns no row: ESIM_OK when it ran. */
static esim_err exec_stmt(sqlite_store *s, esim_error *err, int id, const char *fmt, ...)
{
    sqlite3_stmt *st = stmt_get(s, id, err);
    if (!st)
        return ESIM_ESTORE;
    va_list ap;
    va_start(ap, fmt);
    int rc = bind_args(st, fmt, ap);
    va_end(ap);
    if (rc != SQLITE_OK)
        return db_fail(s, err, "bind");
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        db_fail(s, err, statement_sql[id]);
        sqlite3_reset(st);
        return ESIM_ESTORE;
    }
    return ESIM_OK;
}

static esim_err sq_op_begin(store *base, esim_error *err)
{
    return tx_begin((sqlite_store *)base, err);
}

static esim_err sq_op_end(store *base, esim_err rc, esim_error *err)
{
    return tx_end((sqlite_store *)base, rc, err);
}

static esim_err sq_event_add(store *base, int64_t now, const char *kind, const char *udid,
                             const char *uuid, const char *detail, const void *raw, size_t raw_len,
                             esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_EVENT, "ittttb", now, kind, udid, uuid, detail,
                     raw, raw_len);
}

/* ---- IoT devices and packages ------------------------------------------------------- */

static void sq_iot_row(sqlite3_stmt *st, store_iot_device *d)
{
    col_text(st, 0, d->eid, sizeof d->eid);
    col_text(st, 1, d->state, sizeof d->state);
    d->association_token = sqlite3_column_int64(st, 2);
    d->counter = sqlite3_column_int64(st, 3);
    d->last_poll_ms = sqlite3_column_int64(st, 4);
    d->registered_ms = sqlite3_column_int64(st, 5);
    d->updated_ms = sqlite3_column_int64(st, 6);
    col_text(st, 7, d->last_error, sizeof d->last_error);
}

static esim_err col_blob(sqlite3_stmt *st, int col, esim_buf *out)
{
    const void *b = sqlite3_column_blob(st, col);
    int len = sqlite3_column_bytes(st, col);
    return b && len > 0 ? esim_buf_append(out, b, (size_t)len) : ESIM_OK;
}

static esim_err sq_iot_get(store *base, const char *eid, bool for_update, store_iot_device *out,
                           esim_error *err)
{
    (void)for_update; /* one writer at a time */
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_IOT_GET, "t", eid);
    if (r < 0)
        return ESIM_ESTORE;
    sqlite3_stmt *st = s->stmt[S_IOT_GET];
    esim_err rc = ESIM_OK;
    if (r != SQLITE_ROW) {
        rc = ESIM_ENOTFOUND;
    } else {
        sq_iot_row(st, out);
        if (col_blob(st, 8, &out->euicc_cert) != ESIM_OK)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    sqlite3_reset(st);
    return rc;
}

static esim_err sq_iot_put(store *base, const store_iot_device *d, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_IOT_PUT, "ttiiiiiTb", d->eid, d->state,
                     d->association_token, d->counter, d->last_poll_ms, d->registered_ms,
                     d->updated_ms, d->last_error, d->euicc_cert.len ? d->euicc_cert.data : NULL,
                     d->euicc_cert.len);
}

static esim_err sq_iot_list(store *base, const char *after, size_t limit, store_iot_device **out,
                            size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    store_iot_device *list = calloc(limit, sizeof *list);
    if (!list)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    int r = run(s, err, S_IOT_LIST, "ti", after, (int64_t)limit);
    sqlite3_stmt *st = r >= 0 ? s->stmt[S_IOT_LIST] : NULL;
    size_t count = 0;
    while (r == SQLITE_ROW && count < limit) {
        sq_iot_row(st, &list[count++]);
        r = sqlite3_step(st);
    }
    esim_err rc = ESIM_OK;
    if (r != SQLITE_ROW && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "list the IoT devices");
    if (st)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        free(list);
        return rc;
    }
    *out = list;
    *n = count;
    return ESIM_OK;
}

static esim_err sq_iot_pkg_put(store *base, const store_iot_package *p, int64_t now,
                               esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_IOT_PKG_PUT, "ttttiiiiTtTbbt", p->command_uuid,
                     p->eid, p->kind, p->state, p->counter, p->created_ms ? p->created_ms : now,
                     p->sent_ms, p->answered_ms, p->summary, p->result_words, p->error,
                     p->request.len ? p->request.data : NULL, p->request.len,
                     p->result.len ? p->result.data : NULL, p->result.len, p->smdp);
}

static esim_err sq_iot_trigger_find(store *base, const char *smdp, const char *eid, bool pending,
                                    bool *found, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int id = *eid ? S_IOT_TRIGGER_FIND : pending ? S_IOT_TRIGGER_ANY_SENT : S_IOT_TRIGGER_ANY;
    int r = *eid ? run(s, err, id, "tti", eid, smdp, (int64_t)pending) : run(s, err, id, "t", smdp);
    if (r < 0)
        return ESIM_ESTORE;
    *found = r == SQLITE_ROW;
    sqlite3_reset(s->stmt[id]);
    return r == SQLITE_ROW || r == SQLITE_DONE ? ESIM_OK
                                               : db_fail(s, err, "look up the download triggers");
}

static esim_err sq_relay_session_put(store *base, const store_relay_session *rs,
                                     int64_t expired_before, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = exec_stmt(s, err, S_RELAY_EXPIRE, "i", expired_before);
    return rc != ESIM_OK ? rc
                         : exec_stmt(s, err, S_RELAY_PUT, "ttti", rs->txid, rs->smdp, rs->eid,
                                     rs->created_ms);
}

static esim_err sq_relay_session_get(store *base, const char *txid, store_relay_session *out,
                                     esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_RELAY_GET, "t", txid);
    if (r < 0)
        return ESIM_ESTORE;
    sqlite3_stmt *st = s->stmt[S_RELAY_GET];
    esim_err rc = ESIM_OK;
    if (r == SQLITE_ROW) {
        col_text(st, 0, out->smdp, sizeof out->smdp);
        col_text(st, 1, out->eid, sizeof out->eid);
        out->created_ms = sqlite3_column_int64(st, 2);
    } else {
        rc = r == SQLITE_DONE ? ESIM_ENOTFOUND : db_fail(s, err, "read a relay session");
    }
    sqlite3_reset(st);
    return rc;
}

static esim_err sq_relay_session_drop(store *base, const char *txid, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_RELAY_DROP, "t", txid);
}

static esim_err sq_iot_pkg_list(store *base, const char *eid, const char *uuid, size_t limit,
                                store_iot_package **out, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    store_iot_package *list = calloc(limit, sizeof *list);
    if (!list)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    int id = !*uuid ? S_IOT_PKG_LIST : *eid ? S_IOT_PKG_ONE : S_IOT_PKG_BY_COMMAND;
    int r = id == S_IOT_PKG_ONE    ? run(s, err, id, "tti", uuid, eid, (int64_t)limit)
            : id == S_IOT_PKG_LIST ? run(s, err, id, "ti", eid, (int64_t)limit)
                                   : run(s, err, id, "ti", uuid, (int64_t)limit);
    sqlite3_stmt *st = r >= 0 ? s->stmt[id] : NULL;
    size_t count = 0;
    esim_err rc = ESIM_OK;
    while (r == SQLITE_ROW && count < limit) {
        store_iot_package *p = &list[count++];
        col_text(st, 0, p->command_uuid, sizeof p->command_uuid);
        col_text(st, 1, p->eid, sizeof p->eid);
        col_text(st, 2, p->kind, sizeof p->kind);
        col_text(st, 3, p->state, sizeof p->state);
        p->counter = sqlite3_column_int64(st, 4);
        p->created_ms = sqlite3_column_int64(st, 5);
        p->sent_ms = sqlite3_column_int64(st, 6);
        p->answered_ms = sqlite3_column_int64(st, 7);
        col_text(st, 8, p->summary, sizeof p->summary);
        const unsigned char *w = sqlite3_column_text(st, 9);
        if (w && !(p->result_words = strdup((const char *)w)))
            rc = ESIM_ENOMEM;
        col_text(st, 10, p->error, sizeof p->error);
        if (rc == ESIM_OK &&
            (col_blob(st, 11, &p->request) != ESIM_OK || col_blob(st, 12, &p->result) != ESIM_OK))
            rc = ESIM_ENOMEM;
        col_text(st, 13, p->smdp, sizeof p->smdp);
        if (rc != ESIM_OK)
            break;
        r = sqlite3_step(st);
    }
    if (rc != ESIM_OK)
        esim_fail(err, rc, "out of memory");
    else if (r != SQLITE_ROW && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "list the IoT packages");
    if (st)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        esim_store_iot_packages_free(list, count);
        return rc;
    }
    *out = list;
    *n = count;
    return ESIM_OK;
}

/* ---- the webhook outbox ------------------------------------------------------------ */

/* One INSERT, with the claim when there is one (one instance: never read). */
static esim_err sq_outbox_add(store *base, int64_t url_key, const void *body, size_t len,
                              int64_t now, const char *owner, int64_t claim_ms, int64_t *id,
                              esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    if (!owner)
        claim_ms = 0;
    esim_err rc = exec_stmt(s, err, S_OUTBOX_ADD, "iibti", url_key, now, body, len,
                            owner ? owner : "", claim_ms > 0 ? now + claim_ms : (int64_t)0);
    if (rc == ESIM_OK && id)
        *id = sqlite3_last_insert_rowid(s->db);
    return rc;
}

static esim_err sq_outbox_delete(store *base, int64_t id, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_OUTBOX_DEL, "i", id);
}

static esim_err sq_outbox_list(store *base, int64_t after, size_t limit, store_outbox_row **out,
                               size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    if (limit == 0)
        return ESIM_OK;
    store_outbox_row *list = calloc(limit, sizeof *list);
    if (!list)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    int r = run(s, err, S_OUTBOX_LIST, "ii", after, (int64_t)limit);
    sqlite3_stmt *st = r >= 0 ? s->stmt[S_OUTBOX_LIST] : NULL;
    size_t count = 0;
    esim_err rc = ESIM_OK;
    while (r == SQLITE_ROW && count < limit) {
        store_outbox_row *o = &list[count++];
        o->id = sqlite3_column_int64(st, 0);
        o->url_key = sqlite3_column_int64(st, 1);
        o->created_at = sqlite3_column_int64(st, 2);
        const void *b = sqlite3_column_blob(st, 3);
        int len = sqlite3_column_bytes(st, 3);
        if (b && len > 0 && esim_buf_append(&o->body, b, (size_t)len) != ESIM_OK) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        r = sqlite3_step(st);
    }
    if (rc == ESIM_OK && r != SQLITE_ROW && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "list the webhook outbox");
    if (st)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        esim_store_outbox_free(list, count);
        return rc;
    }
    *out = list;
    *n = count;
    return ESIM_OK;
}

/* ---- device steps ---------------------------------------------------------------- */

static esim_err sq_device_identity(store *base, const char *udid, store_identity *out,
                                   esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_DEV_IDENTITY, "t", udid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return ESIM_ENOTFOUND;
    sqlite3_stmt *st = s->stmt[S_DEV_IDENTITY];
    out->enrolled = sqlite3_column_int(st, 0) != 0;
    col_text(st, 1, out->cert_sha256, sizeof out->cert_sha256);
    out->enrolled_at = sqlite3_column_int64(st, 2);
    col_text(st, 3, out->serial_number, sizeof out->serial_number);
    sqlite3_reset(st);
    return ESIM_OK;
}

static esim_err sq_device_by_cert(store *base, const char *cert, const char *udid, char other[65],
                                  esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_DEV_BY_CERT, "tt", cert, udid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return ESIM_ENOTFOUND;
    col_text(s->stmt[S_DEV_BY_CERT], 0, other, 65);
    sqlite3_reset(s->stmt[S_DEV_BY_CERT]);
    return ESIM_OK;
}

static esim_err sq_device_enroll(store *base, const store_authenticate_in *in, bool keep_token,
                                 int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_DEV_AUTH_UPSERT, "tiTTTTTTTTTiit", in->udid,
                     (int64_t)in->is_enrollment_id, in->topic, in->serial_number, in->os_version,
                     in->build_version, in->product_name, in->model, in->device_name, in->imei,
                     in->cert_sha256, now, (int64_t)keep_token,
                     in->platform && *in->platform ? in->platform : "apple");
}

static esim_err sq_device_restart_enrolment(store *base, const char *udid, int64_t at,
                                            esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_DEV_REENROLLED, "ti", udid, at);
}

static esim_err sq_device_set_token(store *base, const char *udid, const char *topic,
                                    const char *token_hex, const char *push_magic, int64_t now,
                                    int64_t *tally, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = exec_stmt(s, err, S_DEV_TOKEN, "tTTTi", udid, topic, token_hex, push_magic, now);
    if (rc != ESIM_OK || !tally)
        return rc;
    int r = run(s, err, S_DEV_TALLY, "t", udid);
    if (r < 0)
        return ESIM_ESTORE;
    sqlite3_stmt *st = s->stmt[S_DEV_TALLY];
    *tally = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return ESIM_OK;
}

static esim_err sq_device_bind_cert(store *base, const char *udid, const char *cert_sha256,
                                    esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_DEV_BIND_CERT, "tt", udid, cert_sha256);
}

static esim_err sq_device_bootstrap_set(store *base, const char *udid, const void *token,
                                        size_t len, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_DEV_BOOTSTRAP_SET, "tb", udid, token, len);
}

static esim_err sq_device_bootstrap_get(store *base, const char *udid, esim_buf *out,
                                        esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_DEV_BOOTSTRAP_GET, "t", udid);
    if (r < 0)
        return ESIM_ESTORE;
    esim_err rc = ESIM_ENOTFOUND;
    sqlite3_stmt *st = s->stmt[S_DEV_BOOTSTRAP_GET];
    if (r == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_BLOB) {
        const void *data = sqlite3_column_blob(st, 0);
        int len = sqlite3_column_bytes(st, 0);
        rc = esim_buf_append(out, data, (size_t)len) == ESIM_OK
                 ? ESIM_OK
                 : esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    sqlite3_reset(st);
    return rc;
}

static esim_err sq_device_unenroll(store *base, const char *udid, int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_DEV_CHECKOUT, "ti", udid, now);
}

static esim_err sq_device_seen(store *base, const char *udid, const char *eid, int64_t now,
                               esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = exec_stmt(s, err, S_DEV_SEEN, "ti", udid, now);
    if (rc == ESIM_OK && eid)
        rc = exec_stmt(s, err, S_DEV_EID, "tt", udid, eid);
    return rc;
}

static esim_err sq_device_seen_verified(store *base, const char *udid, const char *cert,
                                        const char *eid, int64_t now, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = exec_stmt(s, err, S_DEV_SEEN_VERIFIED, "tiTt", udid, now, cert, eid);
    if (rc == ESIM_OK && sqlite3_changes(s->db) == 0)
        rc = ESIM_ENOTFOUND;
    return rc;
}

static esim_err sq_device_owe_push(store *base, const char *udid, int64_t at, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_DEV_PUSH_DUE_AT, "ti", udid, at);
}

static esim_err sq_device_set_push_state(store *base, const char *udid, store_push_state ps,
                                         esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_DEV_PUSH_STATE, "tt", udid,
                     esim_store_push_state_name(ps));
}

static esim_err sq_device_push_paid(store *base, const char *udid, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_DEV_DUE_CLEAR, "t", udid);
}

static esim_err sq_devices_take_push_due(store *base, int64_t now, char (*udids)[65], size_t max,
                                         size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = ESIM_OK;
    *n = 0;
    int r = run(s, err, S_DEV_DUE_SELECT, "ii", now, (int64_t)max);
    while (r == SQLITE_ROW && *n < max) {
        col_text(s->stmt[S_DEV_DUE_SELECT], 0, udids[*n], 65);
        (*n)++;
        r = sqlite3_step(s->stmt[S_DEV_DUE_SELECT]);
    }
    if (r != SQLITE_DONE && r != SQLITE_ROW)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "push due");
    sqlite3_reset(s->stmt[S_DEV_DUE_SELECT]);
    for (size_t i = 0; rc == ESIM_OK && i < *n; i++)
        rc = exec_stmt(s, err, S_DEV_DUE_CLEAR, "t", udids[i]);
    return rc;
}

/* ---- queue steps ------------------------------------------------------------------- */

static esim_err sq_command_insert(store *base, const store_command_in *cmd, int64_t now,
                                  esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    if (run(s, err, S_CMD_INSERT, "ttbiii", cmd->uuid, cmd->request_type, cmd->body, cmd->body_len,
            (int64_t)cmd->priority, now, cmd->expires_at) >= 0)
        return ESIM_OK;
    return sqlite3_extended_errcode(s->db) == SQLITE_CONSTRAINT_PRIMARYKEY ? ESIM_EEXIST
                                                                           : ESIM_ESTORE;
}

static esim_err sq_entry_insert(store *base, const char *udid, const store_command_in *cmd,
                                int64_t now, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    if (run(s, err, S_Q_INSERT, "ttiii", udid, cmd->uuid, (int64_t)cmd->priority, cmd->expires_at,
            now) >= 0)
        return ESIM_OK;
    return sqlite3_extended_errcode(s->db) == SQLITE_CONSTRAINT_UNIQUE ? ESIM_EEXIST : ESIM_ESTORE;
}

static esim_err sq_entry_find(store *base, const char *udid, const char *uuid, int64_t *entry,
                              store_qstate *state, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_Q_FIND, "tt", udid, uuid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return ESIM_ENOTFOUND;
    *entry = sqlite3_column_int64(s->stmt[S_Q_FIND], 0);
    if (esim_store_qstate_from_name((const char *)sqlite3_column_text(s->stmt[S_Q_FIND], 1),
                                    state) != ESIM_OK)
        *state = STORE_Q_QUEUED;
    sqlite3_reset(s->stmt[S_Q_FIND]);
    return ESIM_OK;
}

static esim_err sq_entry_answer(store *base, int64_t entry, store_qstate state, int not_now_add,
                                const char *error_chain_json, const void *raw, size_t raw_len,
                                int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_Q_ANSWER, "itiiitb", entry,
                     esim_store_qstate_name(state), (int64_t)esim_store_qstate_active(state), now,
                     (int64_t)not_now_add, error_chain_json, raw, raw_len);
}

static esim_err sq_entry_answer_sent(store *base, const char *udid, const char *uuid,
                                     store_qstate state, int not_now_add,
                                     const char *error_chain_json, const void *raw, size_t raw_len,
                                     int64_t now, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = exec_stmt(s, err, S_Q_ANSWER_SENT, "tttiiitb", udid, uuid,
                            esim_store_qstate_name(state), (int64_t)esim_store_qstate_active(state),
                            now, (int64_t)not_now_add, error_chain_json, raw, raw_len);
    if (rc == ESIM_OK && sqlite3_changes(s->db) == 0)
        rc = ESIM_ENOTFOUND;
    return rc;
}

static bool skipped(const char *const *skip, size_t n_skip, const char *uuid)
{
    for (size_t i = 0; i < n_skip; i++)
        if (skip[i] && strcmp(skip[i], uuid) == 0)
            return true;
    return false;
}

static esim_err sq_entry_next(store *base, const char *udid, int64_t now, const char *const *skip,
                              size_t n_skip, int64_t *entry, store_next_command *next,
                              esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3_stmt *st = stmt_get(s, S_Q_NEXT, err);
    if (!st)
        return ESIM_ESTORE;
    sqlite3_bind_text(st, 1, udid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    /* The skipped ones can only be among the first n_skip + 1. */
    sqlite3_bind_int64(st, 3, (int64_t)n_skip + 1);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        const char *uuid = (const char *)sqlite3_column_text(st, 1);
        if (!uuid || skipped(skip, n_skip, uuid))
            continue;
        *entry = sqlite3_column_int64(st, 0);
        col_text(st, 1, next->command_uuid, sizeof next->command_uuid);
        col_text(st, 2, next->request_type, sizeof next->request_type);
        const void *body = sqlite3_column_blob(st, 3);
        int len = sqlite3_column_bytes(st, 3);
        if (esim_buf_append(&next->body, body ? body : "", (size_t)len) != ESIM_OK) {
            sqlite3_reset(st);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        next->present = true;
        break;
    }
    if (r != SQLITE_ROW && r != SQLITE_DONE) {
        db_fail(s, err, "next command");
        sqlite3_reset(st);
        return ESIM_ESTORE;
    }
    sqlite3_reset(st);
    return ESIM_OK;
}

static esim_err sq_entry_mark_sent(store *base, int64_t entry, int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_Q_MARK_SENT, "ii", entry, now);
}

static esim_err sq_entry_cancel(store *base, int64_t entry, int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_Q_CANCEL_ONE, "ii", entry, now);
}

static esim_err sq_entry_retire(store *base, int64_t entry, int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_Q_RETIRE, "ii", entry, now);
}

static esim_err sq_entry_last_sent(store *base, const char *udid, const char *request_type,
                                   int64_t since, int64_t *entry, int64_t *sent_at, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_Q_LAST_SENT, "tit", udid, since, request_type);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return ESIM_ENOTFOUND;
    *entry = sqlite3_column_int64(s->stmt[S_Q_LAST_SENT], 0);
    if (sent_at)
        *sent_at = sqlite3_column_int64(s->stmt[S_Q_LAST_SENT], 1);
    sqlite3_reset(s->stmt[S_Q_LAST_SENT]);
    return ESIM_OK;
}

static esim_err sq_entries_cancel_device(store *base, const char *udid, const char *kind,
                                         const char *detail, int64_t now, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = exec_stmt(s, err, S_Q_CANCEL_ALL_EVENTS, "titt", udid, now, detail, kind);
    if (rc == ESIM_OK)
        rc = exec_stmt(s, err, S_Q_CANCEL_ALL, "ti", udid, now);
    return rc;
}

static esim_err sq_entries_pushed(store *base, const char *udid, int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_Q_PUSHED, "ti", udid, now);
}

static esim_err sq_entries_expire(store *base, const char *kind, int64_t now, size_t *n,
                                  esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = exec_stmt(s, err, S_Q_EXPIRE_EVENTS, "it", now, kind);
    if (rc == ESIM_OK)
        rc = exec_stmt(s, err, S_Q_EXPIRE, "i", now);
    *n = rc == ESIM_OK ? (size_t)sqlite3_changes(s->db) : 0;
    return rc;
}

/* ---- reads ------------------------------------------------------------------- */

static void read_device(sqlite3_stmt *st, store_device *d)
{
    memset(d, 0, sizeof *d);
    col_text(st, 0, d->udid, sizeof d->udid);
    d->is_enrollment_id = sqlite3_column_int(st, 1) != 0;
    d->enrolled = sqlite3_column_int(st, 2) != 0;
    col_text(st, 3, d->topic, sizeof d->topic);
    col_text(st, 4, d->serial_number, sizeof d->serial_number);
    col_text(st, 5, d->os_version, sizeof d->os_version);
    col_text(st, 6, d->build_version, sizeof d->build_version);
    col_text(st, 7, d->product_name, sizeof d->product_name);
    col_text(st, 8, d->model, sizeof d->model);
    col_text(st, 9, d->device_name, sizeof d->device_name);
    col_text(st, 10, d->imei, sizeof d->imei);
    col_text(st, 11, d->eid, sizeof d->eid);
    col_text(st, 12, d->cert_sha256, sizeof d->cert_sha256);
    col_text(st, 13, d->push_token, sizeof d->push_token);
    col_text(st, 14, d->push_magic, sizeof d->push_magic);
    d->push_state = col_push_state(st, 15);
    d->enrolled_at = sqlite3_column_int64(st, 16);
    d->checked_out_at = sqlite3_column_int64(st, 17);
    d->token_updated_at = sqlite3_column_int64(st, 18);
    d->last_seen_at = sqlite3_column_int64(st, 19);
    d->push_due_at = sqlite3_column_int64(st, 20);
    d->token_update_tally = sqlite3_column_int(st, 21);
    col_platform(st, 22, d->platform, sizeof d->platform);
}

static esim_err sq_device_get(store *base, const char *udid, store_device *out, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_DEV_GET, "t", udid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return esim_fail(err, ESIM_ENOTFOUND, "no device %s", udid ? udid : "(null)");
    read_device(s->stmt[S_DEV_GET], out);
    sqlite3_reset(s->stmt[S_DEV_GET]);
    return ESIM_OK;
}

/* What a push needs of the device, without the rest of its row (every push
 * reads it: ≈ 24,000 instructions for the whole row, ≈ 9,000 for these). */
static esim_err sq_push_target(store *base, const char *udid, store_push_target *out,
                               esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_DEV_PUSH_TARGET, "t", udid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return esim_fail(err, ESIM_ENOTFOUND, "no device %s", udid);
    sqlite3_stmt *st = s->stmt[S_DEV_PUSH_TARGET];
    memset(out, 0, sizeof *out);
    col_text(st, 0, out->udid, sizeof out->udid);
    col_text(st, 1, out->topic, sizeof out->topic);
    col_text(st, 2, out->push_token, sizeof out->push_token);
    col_text(st, 3, out->push_magic, sizeof out->push_magic);
    out->push_state = col_push_state(st, 4);
    out->enrolled = sqlite3_column_int(st, 5) != 0;
    col_platform(st, 6, out->platform, sizeof out->platform);
    sqlite3_reset(st);
    return ESIM_OK;
}

/* What a campaign's creation reads of each device of its target, without
 * the rest of its row. */
static esim_err sq_device_brief(store *base, const char *udid, store_device_brief *out,
                                esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_DEV_BRIEF, "t", udid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return esim_fail(err, ESIM_ENOTFOUND, "no device %s", udid);
    sqlite3_stmt *st = s->stmt[S_DEV_BRIEF];
    out->enrolled = sqlite3_column_int(st, 0) != 0;
    col_text(st, 1, out->serial_number, sizeof out->serial_number);
    col_text(st, 2, out->os_version, sizeof out->os_version);
    col_text(st, 3, out->eid, sizeof out->eid);
    col_platform(st, 4, out->platform, sizeof out->platform);
    sqlite3_reset(st);
    return ESIM_OK;
}

static esim_err sq_device_list(store *base, const char *after, size_t limit, store_device **out,
                               size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return ESIM_OK;
    store_device *list = calloc(limit, sizeof *list);
    if (!list)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    int r = run(s, err, S_DEV_LIST, "Ti", after, (int64_t)limit);
    size_t count = 0;
    while (r == SQLITE_ROW && count < limit) {
        read_device(s->stmt[S_DEV_LIST], &list[count++]);
        r = sqlite3_step(s->stmt[S_DEV_LIST]);
    }
    if (r != SQLITE_ROW && r != SQLITE_DONE) {
        if (r > 0)
            db_fail(s, err, "list devices");
        sqlite3_reset(s->stmt[S_DEV_LIST]);
        free(list);
        return ESIM_ESTORE;
    }
    sqlite3_reset(s->stmt[S_DEV_LIST]);
    *out = list;
    *n = count;
    return ESIM_OK;
}

static esim_err sq_device_search(store *base, const char *q, const char *after, size_t limit,
                                 store_device **out, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    store_device *list = calloc(limit, sizeof *list);
    if (!list)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    int r = run(s, err, S_DEV_SEARCH, "TiT", after, (int64_t)limit, q);
    size_t count = 0;
    while (r == SQLITE_ROW && count < limit) {
        read_device(s->stmt[S_DEV_SEARCH], &list[count++]);
        r = sqlite3_step(s->stmt[S_DEV_SEARCH]);
    }
    if (r != SQLITE_ROW && r != SQLITE_DONE) {
        if (r > 0)
            db_fail(s, err, "search devices");
        sqlite3_reset(s->stmt[S_DEV_SEARCH]);
        free(list);
        return ESIM_ESTORE;
    }
    sqlite3_reset(s->stmt[S_DEV_SEARCH]);
    *out = list;
    *n = count;
    return ESIM_OK;
}

static esim_err sq_fleet_counts(store *base, store_fleet_row **rows, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    store_fleet_row *list = NULL;
    size_t count = 0, cap = 0;
    int r = run(s, err, S_FLEET, "");
    sqlite3_stmt *st = r >= 0 ? s->stmt[S_FLEET] : NULL;
    while (r == SQLITE_ROW) {
        if (count == cap) {
            size_t nc = cap ? cap * 2 : 32;
            store_fleet_row *g = realloc(list, nc * sizeof *g);
            if (!g) {
                sqlite3_reset(st);
                free(list);
                return esim_fail(err, ESIM_ENOMEM, "out of memory");
            }
            list = g;
            cap = nc;
        }
        store_fleet_row *row = &list[count++];
        memset(row, 0, sizeof *row);
        col_text(st, 0, row->product_name, sizeof row->product_name);
        col_text(st, 1, row->model, sizeof row->model);
        row->enrolled = sqlite3_column_int(st, 2) != 0;
        row->push_state = col_push_state(st, 3);
        row->verified = sqlite3_column_int(st, 4) != 0;
        row->count = (uint64_t)sqlite3_column_int64(st, 5);
        col_text(st, 6, row->platform, sizeof row->platform);
        r = sqlite3_step(st);
    }
    if (r != SQLITE_DONE) {
        if (r > 0)
            db_fail(s, err, "fleet counts");
        if (st)
            sqlite3_reset(st);
        free(list);
        return ESIM_ESTORE;
    }
    sqlite3_reset(st);
    *rows = list;
    *n = count;
    return ESIM_OK;
}

static esim_err read_entry(sqlite3_stmt *st, store_queue_entry *e)
{
    memset(e, 0, sizeof *e);
    col_text(st, 0, e->udid, sizeof e->udid);
    col_text(st, 1, e->command_uuid, sizeof e->command_uuid);
    col_text(st, 2, e->request_type, sizeof e->request_type);
    const char *state = (const char *)sqlite3_column_text(st, 3);
    if (esim_store_qstate_from_name(state, &e->state) != ESIM_OK)
        e->state = STORE_Q_QUEUED;
    e->priority = sqlite3_column_int(st, 4);
    e->attempts = sqlite3_column_int(st, 5);
    e->not_now_count = sqlite3_column_int(st, 6);
    e->enqueued_at = sqlite3_column_int64(st, 7);
    e->pushed_at = sqlite3_column_int64(st, 8);
    e->sent_at = sqlite3_column_int64(st, 9);
    e->answered_at = sqlite3_column_int64(st, 10);
    e->updated_at = sqlite3_column_int64(st, 11);
    e->expires_at = sqlite3_column_int64(st, 12);
    const unsigned char *chain = sqlite3_column_text(st, 13);
    if (chain && !(e->error_chain_json = strdup((const char *)chain)))
        return ESIM_ENOMEM;
    const void *raw = sqlite3_column_blob(st, 14);
    int len = sqlite3_column_bytes(st, 14);
    if (raw && len > 0 && esim_buf_append(&e->result, raw, (size_t)len) != ESIM_OK)
        return ESIM_ENOMEM;
    return ESIM_OK;
}

/* Appends every row of the already-stepped statement |id| to a growing array. */
static esim_err collect_entries(sqlite_store *s, int id, int first_rc, store_queue_entry **arr,
                                size_t *n, size_t *cap, esim_error *err)
{
    sqlite3_stmt *st = s->stmt[id];
    int r = first_rc;
    esim_err rc = ESIM_OK;
    while (r == SQLITE_ROW) {
        if (*n == *cap) {
            size_t ncap = *cap ? *cap * 2 : 16;
            store_queue_entry *grown = realloc(*arr, ncap * sizeof *grown);
            if (!grown) {
                rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
                break;
            }
            *arr = grown;
            *cap = ncap;
        }
        esim_err er = read_entry(st, &(*arr)[*n]);
        (*n)++;
        if (er != ESIM_OK) {
            rc = esim_fail(err, er, "out of memory");
            break;
        }
        r = sqlite3_step(st);
    }
    if (rc == ESIM_OK && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "read queue");
    sqlite3_reset(st);
    return rc;
}

static esim_err sq_command_get(store *base, const char *uuid, const char *after, size_t limit,
                               store_command_info *info, store_queue_entry **entries, size_t *n,
                               esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    *entries = NULL;
    *n = 0;
    int r = run(s, err, S_CMD_GET, "t", uuid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return esim_fail(err, ESIM_ENOTFOUND, "no command %s", uuid ? uuid : "(null)");
    sqlite3_stmt *st = s->stmt[S_CMD_GET];
    memset(info, 0, sizeof *info);
    col_text(st, 0, info->uuid, sizeof info->uuid);
    col_text(st, 1, info->request_type, sizeof info->request_type);
    info->priority = sqlite3_column_int(st, 2);
    info->created_at = sqlite3_column_int64(st, 3);
    info->expires_at = sqlite3_column_int64(st, 4);
    sqlite3_reset(st);
    r = run(s, err, S_Q_COUNT_BY_COMMAND, "t", uuid);
    while (r == SQLITE_ROW) {
        sqlite3_stmt *cs = s->stmt[S_Q_COUNT_BY_COMMAND];
        store_qstate qs;
        uint64_t count = (uint64_t)sqlite3_column_int64(cs, 1);
        if (esim_store_qstate_from_name((const char *)sqlite3_column_text(cs, 0), &qs) == ESIM_OK)
            info->by_state[qs] = count;
        info->devices += count;
        r = sqlite3_step(cs);
    }
    if (s->stmt[S_Q_COUNT_BY_COMMAND])
        sqlite3_reset(s->stmt[S_Q_COUNT_BY_COMMAND]);
    if (r != SQLITE_DONE)
        return r < 0 ? ESIM_ESTORE : db_fail(s, err, "count command states");
    if (limit == 0)
        return ESIM_OK;
    size_t cap = 0;
    r = run(s, err, S_Q_BY_COMMAND, "tTi", uuid, after, (int64_t)limit);
    esim_err rc =
        r < 0 ? ESIM_ESTORE : collect_entries(s, S_Q_BY_COMMAND, r, entries, n, &cap, err);
    if (rc != ESIM_OK) {
        esim_store_queue_entries_free(*entries, *n);
        *entries = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err sq_device_entries(store *base, const char *udid, bool with_done,
                                  store_queue_entry **entries, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    size_t cap = 0;
    int r = run(s, err, S_Q_ACTIVE_FOR_DEVICE, "t", udid);
    esim_err rc =
        r < 0 ? ESIM_ESTORE : collect_entries(s, S_Q_ACTIVE_FOR_DEVICE, r, entries, n, &cap, err);
    if (rc == ESIM_OK && with_done) {
        r = run(s, err, S_Q_DONE_FOR_DEVICE, "t", udid);
        rc =
            r < 0 ? ESIM_ESTORE : collect_entries(s, S_Q_DONE_FOR_DEVICE, r, entries, n, &cap, err);
    }
    return rc;
}

static esim_err sq_stats(store *base, store_stats *out, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = ESIM_OK;
    int r = run(s, err, S_STATS_DEVICES, "");
    if (r == SQLITE_ROW) {
        out->devices = (uint64_t)sqlite3_column_int64(s->stmt[S_STATS_DEVICES], 0);
        out->enrolled = (uint64_t)sqlite3_column_int64(s->stmt[S_STATS_DEVICES], 1);
        out->reachable = (uint64_t)sqlite3_column_int64(s->stmt[S_STATS_DEVICES], 2);
        r = run(s, err, S_STATS_QUEUE, "");
        while (r == SQLITE_ROW) {
            store_qstate qs;
            if (esim_store_qstate_from_name(
                    (const char *)sqlite3_column_text(s->stmt[S_STATS_QUEUE], 0), &qs) == ESIM_OK)
                out->queue_by_state[qs] = (uint64_t)sqlite3_column_int64(s->stmt[S_STATS_QUEUE], 1);
            r = sqlite3_step(s->stmt[S_STATS_QUEUE]);
        }
        if (r == SQLITE_DONE)
            r = run(s, err, S_STATS_EVENTS, "");
        if (r == SQLITE_ROW)
            out->events = (uint64_t)sqlite3_column_int64(s->stmt[S_STATS_EVENTS], 0);
    }
    if (r != SQLITE_ROW)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "stats");
    for (int i = S_STATS_DEVICES; i <= S_STATS_EVENTS; i++)
        if (s->stmt[i])
            sqlite3_reset(s->stmt[i]);
    return rc;
}

static esim_err sq_events_list(store *base, const char *udid, int64_t after, size_t limit,
                               store_event **out, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return ESIM_OK;
    store_event *list = calloc(limit, sizeof *list);
    if (!list)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    sqlite3_stmt *st = NULL;
    int r = run(s, err, S_EVENTS_LIST, "tii", udid, after, (int64_t)limit);
    if (r >= 0)
        st = s->stmt[S_EVENTS_LIST];
    size_t count = 0;
    esim_err rc = ESIM_OK;
    while (r == SQLITE_ROW && count < limit) {
        store_event *e = &list[count++];
        e->id = sqlite3_column_int64(st, 0);
        e->at = sqlite3_column_int64(st, 1);
        col_text(st, 2, e->kind, sizeof e->kind);
        col_text(st, 3, e->udid, sizeof e->udid);
        col_text(st, 4, e->command_uuid, sizeof e->command_uuid);
        col_text(st, 5, e->detail, sizeof e->detail);
        const void *raw = sqlite3_column_blob(st, 6);
        int len = sqlite3_column_bytes(st, 6);
        if (raw && len > 0 && esim_buf_append(&e->raw, raw, (size_t)len) != ESIM_OK) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        r = sqlite3_step(st);
    }
    if (rc == ESIM_OK && r != SQLITE_ROW && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "list events");
    if (st)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        esim_store_events_free(list, count);
        return rc;
    }
    *out = list;
    *n = count;
    return ESIM_OK;
}

static esim_err sq_audit_add(store *base, const store_audit *in, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_AUDIT_ADD, "iTTTTiT", in->at, in->who, in->role,
                     in->method, in->target, (int64_t)in->status, in->detail);
}

static esim_err sq_audit_list(store *base, int64_t after, size_t limit, store_audit **out,
                              size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    store_audit *list = calloc(limit, sizeof *list);
    if (!list)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    int r = run(s, err, S_AUDIT_LIST, "ii", after, (int64_t)limit);
    sqlite3_stmt *st = r >= 0 ? s->stmt[S_AUDIT_LIST] : NULL;
    size_t count = 0;
    while (r == SQLITE_ROW && count < limit) {
        store_audit *a = &list[count++];
        a->id = sqlite3_column_int64(st, 0);
        a->at = sqlite3_column_int64(st, 1);
        col_text(st, 2, a->who, sizeof a->who);
        col_text(st, 3, a->role, sizeof a->role);
        col_text(st, 4, a->method, sizeof a->method);
        col_text(st, 5, a->target, sizeof a->target);
        a->status = sqlite3_column_int(st, 6);
        col_text(st, 7, a->detail, sizeof a->detail);
        r = sqlite3_step(st);
    }
    esim_err rc = ESIM_OK;
    if (r != SQLITE_ROW && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "list the audit log");
    if (st)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        free(list);
        return rc;
    }
    *out = list;
    *n = count;
    return ESIM_OK;
}

static esim_err sq_event_latest(store *base, const char *udid, const char *const *kinds,
                                size_t n_kinds, store_event *out, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    sqlite3_stmt *st = stmt_get(s, S_EVENT_LATEST, err);
    if (!st)
        return ESIM_ESTORE;
    sqlite3_bind_text(st, 1, udid, -1, SQLITE_STATIC);
    /* Unused kind slots stay NULL, which matches nothing. */
    for (size_t i = 0; i < n_kinds && i < STORE_EVENT_KINDS_MAX; i++)
        sqlite3_bind_text(st, (int)i + 2, kinds[i], -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    esim_err rc = ESIM_OK;
    if (r == SQLITE_ROW) {
        out->id = sqlite3_column_int64(st, 0);
        out->at = sqlite3_column_int64(st, 1);
        col_text(st, 2, out->kind, sizeof out->kind);
        col_text(st, 3, out->udid, sizeof out->udid);
        col_text(st, 4, out->command_uuid, sizeof out->command_uuid);
        col_text(st, 5, out->detail, sizeof out->detail);
    } else if (r == SQLITE_DONE) {
        rc = ESIM_ENOTFOUND;
    } else {
        rc = db_fail(s, err, "latest event");
    }
    sqlite3_reset(st);
    return rc;
}

/* ---- campaign records ------------------------------------------------------------- */

static esim_err sq_campaign_put(store *base, const store_campaign *c, int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_CAMP_PUT, "tTtiii", c->id, c->name, c->definition,
                     (int64_t)c->state, c->created_ms, now);
}

static esim_err sq_campaign_command_put(store *base, const char *campaign_id,
                                        const store_campaign_command *cmd, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_CAMP_CMD_PUT, "tti", cmd->uuid, campaign_id,
                     (int64_t)cmd->step);
}

static esim_err camp_dev_write(sqlite_store *s, int id, const char *campaign_id,
                               const store_campaign_device *d, esim_error *err)
{
    return exec_stmt(s, err, id, "titTTiiiiiiiiiiiiTti", campaign_id, (int64_t)d->index, d->udid,
                     d->eid, d->iccid, (int64_t)d->state, (int64_t)d->step, (int64_t)d->retries,
                     (int64_t)d->verify_tries, (int64_t)d->flags, (int64_t)d->pushes, d->not_now,
                     d->changed_ms, d->next_ms, d->deadline_ms, d->last_push_ms,
                     (int64_t)d->push_state, d->command_uuid, d->reason, (int64_t)d->platform);
}

/* A campaign's device records are written again at each of the device's
 * steps, always under the UDID they were created with: an update that
 * leaves the UDID's index entry alone (≈ 4,500 of the upsert's ≈ 21,000
 * instructions), and the upsert when there is no such record. */
static esim_err sq_campaign_device_put(store *base, const char *campaign_id,
                                       const store_campaign_device *d, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = camp_dev_write(s, S_CAMP_DEV_UPDATE, campaign_id, d, err);
    if (rc != ESIM_OK || sqlite3_changes(s->db) > 0)
        return rc;
    return camp_dev_write(s, S_CAMP_DEV_PUT, campaign_id, d, err);
}

/* A growing array of |size|-byte records: room for one more at *arr + *n. */
static void *grow(void **arr, size_t size, size_t n, size_t *cap)
{
    if (n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        void *g = realloc(*arr, ncap * size);
        if (!g)
            return NULL;
        *arr = g;
        *cap = ncap;
    }
    return (char *)*arr + n * size;
}

static char *col_dup(sqlite3_stmt *st, int col)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    return strdup(v ? (const char *)v : "");
}

static esim_err sq_campaign_state_get(store *base, const char *id, int *state, int64_t *version,
                                      esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_CAMP_STATE_GET, "t", id);
    if (r < 0)
        return ESIM_ESTORE;
    sqlite3_stmt *st = s->stmt[S_CAMP_STATE_GET];
    if (r == SQLITE_ROW) {
        *state = sqlite3_column_int(st, 0);
        *version = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return r == SQLITE_ROW ? ESIM_OK : ESIM_ENOTFOUND;
}

static esim_err sq_campaign_state_put(store *base, const char *id, int state, int64_t now,
                                      esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_CAMP_STATE_PUT, "tii", id, (int64_t)state, now);
}

static esim_err sq_campaign_totals_put(store *base, const char *id, int64_t pushes,
                                       int64_t commands, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_CAMP_TOTALS_PUT, "tii", id, pushes, commands);
}

static esim_err sq_campaigns_list(store *base, store_campaign **out, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    size_t cap = 0;
    esim_err rc = ESIM_OK;
    int r = run(s, err, S_CAMP_LIST, "");
    sqlite3_stmt *st = s->stmt[S_CAMP_LIST];
    while (r == SQLITE_ROW) {
        store_campaign *c = grow((void **)out, sizeof **out, *n, &cap);
        if (!c) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        memset(c, 0, sizeof *c);
        (*n)++;
        c->id = col_dup(st, 0);
        c->name = col_dup(st, 1);
        c->definition = col_dup(st, 2);
        c->state = sqlite3_column_int(st, 3);
        c->created_ms = sqlite3_column_int64(st, 4);
        c->updated_ms = sqlite3_column_int64(st, 5);
        c->version = sqlite3_column_int64(st, 6);
        c->pushes = sqlite3_column_int64(st, 7);
        c->commands = sqlite3_column_int64(st, 8);
        if (!c->id || !c->name || !c->definition) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        r = sqlite3_step(st);
    }
    if (rc == ESIM_OK && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "read campaigns");
    if (r >= 0)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        esim_store_campaigns_free(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err sq_campaign_devices(store *base, const char *campaign_id,
                                    store_campaign_device **out, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    size_t cap = 0;
    esim_err rc = ESIM_OK;
    int r = run(s, err, S_CAMP_DEVS, "t", campaign_id);
    sqlite3_stmt *st = s->stmt[S_CAMP_DEVS];
    while (r == SQLITE_ROW) {
        store_campaign_device *d = grow((void **)out, sizeof **out, *n, &cap);
        if (!d) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        memset(d, 0, sizeof *d);
        (*n)++;
        d->index = (size_t)sqlite3_column_int64(st, 0);
        col_text(st, 1, d->udid, sizeof d->udid);
        col_text(st, 2, d->eid, sizeof d->eid);
        col_text(st, 3, d->iccid, sizeof d->iccid);
        d->state = sqlite3_column_int(st, 4);
        d->step = sqlite3_column_int(st, 5);
        d->retries = sqlite3_column_int(st, 6);
        d->verify_tries = sqlite3_column_int(st, 7);
        d->flags = sqlite3_column_int(st, 8);
        d->pushes = sqlite3_column_int(st, 9);
        d->not_now = sqlite3_column_int64(st, 10);
        d->changed_ms = sqlite3_column_int64(st, 11);
        d->next_ms = sqlite3_column_int64(st, 12);
        d->deadline_ms = sqlite3_column_int64(st, 13);
        d->last_push_ms = sqlite3_column_int64(st, 14);
        d->push_state = sqlite3_column_int(st, 15);
        col_text(st, 16, d->command_uuid, sizeof d->command_uuid);
        d->platform = (uint8_t)sqlite3_column_int(st, 18);
        if (sqlite3_column_type(st, 17) != SQLITE_NULL && !(d->reason = col_dup(st, 17))) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        r = sqlite3_step(st);
    }
    if (rc == ESIM_OK && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "read campaign devices");
    if (r >= 0)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        esim_store_campaign_devices_free(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err sq_campaign_commands(store *base, const char *campaign_id,
                                     store_campaign_command **out, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    size_t cap = 0;
    esim_err rc = ESIM_OK;
    int r = run(s, err, S_CAMP_CMDS, "t", campaign_id);
    sqlite3_stmt *st = s->stmt[S_CAMP_CMDS];
    while (r == SQLITE_ROW) {
        store_campaign_command *c = grow((void **)out, sizeof **out, *n, &cap);
        if (!c) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        (*n)++;
        col_text(st, 0, c->uuid, sizeof c->uuid);
        c->step = sqlite3_column_int(st, 1);
        r = sqlite3_step(st);
    }
    if (rc == ESIM_OK && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "read campaign commands");
    if (r >= 0)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err sq_manifest_put(store *base, const store_manifest_row *row, int64_t now,
                                esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_MANIFEST_PUT, "tti", row->serial, row->eid, now);
}

static esim_err sq_code_put(store *base, const store_code_row *row, int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_CODE_PUT, "ttTTTi", row->eid, row->code,
                     row->smdp_address, row->matching_id, row->iccid, now);
}

static esim_err sq_manifest_eid(store *base, const char *serial, char eid[ESIM_EID_LEN + 1],
                                esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_MANIFEST_GET, "t", serial);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return ESIM_ENOTFOUND;
    col_text(s->stmt[S_MANIFEST_GET], 0, eid, ESIM_EID_LEN + 1);
    sqlite3_reset(s->stmt[S_MANIFEST_GET]);
    return ESIM_OK;
}

static esim_err sq_code_for_eid(store *base, const char *eid, char iccid[21], char matching_id[256],
                                esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_CODE_GET, "t", eid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return ESIM_ENOTFOUND;
    col_text(s->stmt[S_CODE_GET], 0, iccid, 21);
    col_text(s->stmt[S_CODE_GET], 1, matching_id, 256);
    sqlite3_reset(s->stmt[S_CODE_GET]);
    return ESIM_OK;
}

static esim_err sq_group_exists(store *base, const char *name, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_GROUP_EXISTS, "t", name);
    if (r < 0)
        return ESIM_ESTORE;
    sqlite3_reset(s->stmt[S_GROUP_EXISTS]);
    return r == SQLITE_ROW ? ESIM_OK : ESIM_ENOTFOUND;
}

static esim_err sq_group_create(store *base, const char *name, int64_t now, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_GROUP_CREATE, "ti", name, now);
}

static esim_err sq_group_drop(store *base, const char *name, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    esim_err rc = exec_stmt(s, err, S_GROUP_DROP_MEMBERS, "t", name);
    return rc == ESIM_OK ? exec_stmt(s, err, S_GROUP_DROP, "t", name) : rc;
}

static esim_err sq_group_member_set(store *base, const char *name, const char *udid, bool member,
                                    esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, member ? S_GROUP_ADD : S_GROUP_REMOVE, "tt", name,
                     udid);
}

static esim_err sq_groups_list(store *base, store_group **out, size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    size_t cap = 0;
    esim_err rc = ESIM_OK;
    int r = run(s, err, S_GROUPS_LIST, "");
    sqlite3_stmt *st = s->stmt[S_GROUPS_LIST];
    while (r == SQLITE_ROW) {
        store_group *g = grow((void **)out, sizeof **out, *n, &cap);
        if (!g) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        (*n)++;
        col_text(st, 0, g->name, sizeof g->name);
        g->members = (uint64_t)sqlite3_column_int64(st, 1);
        r = sqlite3_step(st);
    }
    if (rc == ESIM_OK && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "read groups");
    if (r >= 0)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err sq_names_list(store *base, store_names which, const char *key, char (**out)[65],
                              size_t *n, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int id = which == STORE_NAMES_GROUP_MEMBERS ? S_GROUP_MEMBERS
             : which == STORE_NAMES_TAG_DEVICES ? S_TAG_DEVICES
                                                : S_DEVICE_TAGS;
    size_t cap = 0;
    esim_err rc = ESIM_OK;
    int r = run(s, err, id, "t", key);
    sqlite3_stmt *st = s->stmt[id];
    while (r == SQLITE_ROW) {
        char *slot = grow((void **)out, sizeof **out, *n, &cap);
        if (!slot) {
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
            break;
        }
        (*n)++;
        col_text(st, 0, slot, 65);
        r = sqlite3_step(st);
    }
    if (rc == ESIM_OK && r != SQLITE_DONE)
        rc = r < 0 ? ESIM_ESTORE : db_fail(s, err, "read names");
    if (r >= 0)
        sqlite3_reset(st);
    if (rc != ESIM_OK) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err sq_tag_set(store *base, const char *udid, const char *tag, bool on, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, on ? S_TAG_ADD : S_TAG_REMOVE, "tt", udid, tag);
}

static esim_err sq_facts_put(store *base, const store_device_facts *f, esim_error *err)
{
    return exec_stmt((sqlite_store *)base, err, S_FACTS_PUT, "tiTTTii", f->udid,
                     (int64_t)f->supervised, f->os_version, f->eid, f->iccid, f->verified_ms,
                     f->updated_ms);
}

static esim_err sq_facts_get(store *base, const char *udid, store_device_facts *out,
                             esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    int r = run(s, err, S_FACTS_GET, "t", udid);
    if (r < 0)
        return ESIM_ESTORE;
    if (r != SQLITE_ROW)
        return ESIM_ENOTFOUND;
    sqlite3_stmt *st = s->stmt[S_FACTS_GET];
    out->supervised = sqlite3_column_int(st, 0);
    col_text(st, 1, out->os_version, sizeof out->os_version);
    col_text(st, 2, out->eid, sizeof out->eid);
    col_text(st, 3, out->iccid, sizeof out->iccid);
    out->verified_ms = sqlite3_column_int64(st, 4);
    out->updated_ms = sqlite3_column_int64(st, 5);
    sqlite3_reset(st);
    return ESIM_OK;
}

/* Group commit: with synchronous=NORMAL a WAL commit is a write() into the
 * OS cache. One fdatasync of the log then makes every commit so far durable;
 * the service holds its answers until this returns, so nothing a device or
 * an admin was told can vanish in a power cut, yet a burst of requests costs
 * one fsync, not one each. (SQLite itself syncs the log before any
 * checkpoint copies it into the database.) */
static int64_t sq_commit_count(store *base)
{
    return sqlite3_total_changes64(((sqlite_store *)base)->db);
}

/* Touches only the log's file descriptor, never the connection, so it may
 * run on a sync thread while the loop keeps committing. */
static esim_err sq_sync(store *base, esim_error *err)
{
    sqlite_store *s = (sqlite_store *)base;
    if (s->sync != STORE_SYNC_GROUP)
        return ESIM_OK;
    if (s->wal_fd < 0 || fdatasync(s->wal_fd) != 0)
        return esim_fail(err, ESIM_ESTORE, "store (sqlite): cannot fsync %s", s->wal_path);
    return ESIM_OK;
}

/* ---- open, migrate, close -------------------------------------------------------- */

static void sq_close(store *base)
{
    sqlite_store *s = (sqlite_store *)base;
    if (!s)
        return;
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(s->stmt[i]);
    sqlite3_close(s->db);
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    free(s->wal_path);
    free(s);
}

static void sq_backend_stats(store *base, store_backend_stats *out)
{
    out->connections = ((sqlite_store *)base)->db ? 1 : 0;
}

static const struct store_ops sqlite_ops = {
    .name = "sqlite",
    .features = ESIM_STORE_FEATURE_BATCH | ESIM_STORE_FEATURE_DEFERRED_SYNC,
    .close = sq_close,
    .op_begin = sq_op_begin,
    .op_end = sq_op_end,
    .op_begin_checked = sq_op_begin_checked,
    .device_identity = sq_device_identity,
    .device_by_cert = sq_device_by_cert,
    .device_enroll = sq_device_enroll,
    .device_restart_enrolment = sq_device_restart_enrolment,
    .device_set_token = sq_device_set_token,
    .device_unenroll = sq_device_unenroll,
    .device_seen = sq_device_seen,
    .device_seen_verified = sq_device_seen_verified,
    .device_owe_push = sq_device_owe_push,
    .device_set_push_state = sq_device_set_push_state,
    .device_push_paid = sq_device_push_paid,
    .devices_take_push_due = sq_devices_take_push_due,
    .device_get = sq_device_get,
    .push_target = sq_push_target,
    .device_brief = sq_device_brief,
    .device_list = sq_device_list,
    .command_insert = sq_command_insert,
    .entry_insert = sq_entry_insert,
    .entry_find = sq_entry_find,
    .entry_answer = sq_entry_answer,
    .entry_answer_sent = sq_entry_answer_sent,
    .entry_next = sq_entry_next,
    .entry_mark_sent = sq_entry_mark_sent,
    .entry_cancel = sq_entry_cancel,
    .entry_retire = sq_entry_retire,
    .entry_last_sent = sq_entry_last_sent,
    .entries_cancel_device = sq_entries_cancel_device,
    .entries_pushed = sq_entries_pushed,
    .entries_expire = sq_entries_expire,
    .command_get = sq_command_get,
    .device_entries = sq_device_entries,
    .event_add = sq_event_add,
    .outbox_add = sq_outbox_add,
    .outbox_delete = sq_outbox_delete,
    .outbox_list = sq_outbox_list,
    .iot_get = sq_iot_get,
    .iot_put = sq_iot_put,
    .iot_list = sq_iot_list,
    .iot_pkg_put = sq_iot_pkg_put,
    .iot_pkg_list = sq_iot_pkg_list,
    .iot_trigger_find = sq_iot_trigger_find,
    .relay_session_put = sq_relay_session_put,
    .relay_session_get = sq_relay_session_get,
    .relay_session_drop = sq_relay_session_drop,
    .events_list = sq_events_list,
    .event_latest = sq_event_latest,
    .audit_add = sq_audit_add,
    .audit_list = sq_audit_list,
    .stats = sq_stats,
    .device_search = sq_device_search,
    .fleet_counts = sq_fleet_counts,
    .campaign_put = sq_campaign_put,
    .campaign_command_put = sq_campaign_command_put,
    .campaign_device_put = sq_campaign_device_put,
    .campaign_state_get = sq_campaign_state_get,
    .campaign_state_put = sq_campaign_state_put,
    .campaign_totals_put = sq_campaign_totals_put,
    .campaigns_list = sq_campaigns_list,
    .campaign_devices = sq_campaign_devices,
    .campaign_commands = sq_campaign_commands,
    .manifest_put = sq_manifest_put,
    .code_put = sq_code_put,
    .manifest_eid = sq_manifest_eid,
    .code_for_eid = sq_code_for_eid,
    .group_exists = sq_group_exists,
    .group_create = sq_group_create,
    .group_drop = sq_group_drop,
    .group_member_set = sq_group_member_set,
    .groups_list = sq_groups_list,
    .names_list = sq_names_list,
    .tag_set = sq_tag_set,
    .facts_put = sq_facts_put,
    .facts_get = sq_facts_get,
    .device_bind_cert = sq_device_bind_cert,
    .device_bootstrap_set = sq_device_bootstrap_set,
    .device_bootstrap_get = sq_device_bootstrap_get,
    .backend_stats = sq_backend_stats,
    .batch_begin = sq_batch_begin,
    .batch_commit = sq_batch_commit,
    .batch_rollback = sq_batch_rollback,
    .commit_count = sq_commit_count,
    .sync = sq_sync,
};

int store_sqlite_schema_version(void)
{
    return migrations[sizeof migrations / sizeof migrations[0] - 1].version;
}

static esim_err exec(sqlite_store *s, const char *sql, esim_error *err)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return ESIM_OK;
    esim_fail(err, ESIM_ESTORE, "store (sqlite): %s", msg ? msg : sqlite3_errmsg(s->db));
    sqlite3_free(msg);
    return ESIM_ESTORE;
}

/* Applies, each in its own transaction, every migration newer than the
 * database; refuses a database written by a newer program. */
static esim_err migrate(sqlite_store *s, esim_error *err)
{
    esim_err rc =
        exec(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", err);
    if (rc != ESIM_OK)
        return rc;
    sqlite3_stmt *st = NULL;
    int current = 0;
    if (sqlite3_prepare_v2(s->db, "SELECT coalesce(max(version), 0) FROM schema_version", -1, &st,
                           NULL) != SQLITE_OK)
        return db_fail(s, err, "read schema version");
    if (sqlite3_step(st) == SQLITE_ROW)
        current = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (current > store_sqlite_schema_version())
        return esim_fail(err, ESIM_ESTORE,
                         "the store has schema version %d, newer than this program's %d: "
                         "run a newer esim-mdm",
                         current, store_sqlite_schema_version());
    for (size_t i = 0; i < sizeof migrations / sizeof migrations[0]; i++) {
        if (migrations[i].version <= current)
            continue;
        char bump[96];
        snprintf(bump, sizeof bump,
                 "DELETE FROM schema_version; INSERT INTO schema_version VALUES (%d);",
                 migrations[i].version);
        rc = exec(s, "BEGIN IMMEDIATE", err);
        if (rc == ESIM_OK)
            rc = exec(s, migrations[i].sql, err);
        if (rc == ESIM_OK)
            rc = exec(s, bump, err);
        if (rc == ESIM_OK)
            rc = exec(s, "COMMIT", err);
        if (rc != ESIM_OK) {
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return rc;
        }
    }
    return ESIM_OK;
}

/* One of sqlite3_stmt_status's counters summed over the cached statements. */
static uint64_t stmt_status_sum(store *st, int counter)
{
    sqlite_store *s = (sqlite_store *)st;
    uint64_t n = 0;
    for (size_t i = 0; i < S_COUNT; i++)
        if (s->stmt[i])
            n += (uint64_t)sqlite3_stmt_status(s->stmt[i], counter, 0);
    return n;
}

uint64_t store_sqlite_fullscan_steps(store *st)
{
    return stmt_status_sum(st, SQLITE_STMTSTATUS_FULLSCAN_STEP);
}

uint64_t store_sqlite_statements_run(store *st)
{
    return stmt_status_sum(st, SQLITE_STMTSTATUS_RUN);
}

sqlite3 *store_sqlite_db(store *st)
{
    return ((sqlite_store *)st)->db;
}

/* SQLite's process-wide settings, made once before it initialises
 * (afterwards each is refused, which leaves SQLite's default in place).
 *
 * Its memory statistics, on by default, take a global mutex around
 * every allocation and free, and this library (Debian's, built without
 * lookaside) allocates for nearly every value a statement reads or
 * writes: about 230 allocations per check-in round trip, the mutex and the
 * counters ≈ 25,000 instructions of it (callgrind). Nothing here reads the
 * statistics (sqlite3_memory_used, a soft heap limit), so they are off. */
static void sqlite_configure(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    /* SQLite's statement-journal spill (SQLITE_CONFIG_STMTJRNL_SPILL)
     * stays at its default (64 KiB): SQLite 3.40.1 (Debian 12's) with a
     * threshold of 256 KiB or more fails an upsert inside a savepoint with
     * SQLITE_FULL ("database or disk is full", nothing full) and rolls the
     * whole transaction back, once an operation's sub-journal has outgrown
     * the threshold (test_store: test_sub_journal_spill). At 8 MiB it undid
     * a batch of a 100,000-device demo's campaign in every run. The
     * threshold saved ≈ 18 pwrite(2)s a device, within the noise in CPU. */
    sqlite3_config(SQLITE_CONFIG_LOG, sqlite_log, NULL);
    store_sqlite_mem_install();
}

esim_err store_sqlite_open(const char *path, const store_options *opts, store **out,
                           esim_error *err)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, sqlite_configure);
    sqlite_store *s = calloc(1, sizeof *s);
    if (!s)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    s->base.ops = &sqlite_ops;
    s->wal_fd = -1;
    s->sync = opts ? opts->sync : STORE_SYNC_GROUP;
    size_t plen = strlen(path);
    s->wal_path = malloc(plen + 5);
    if (!s->wal_path) {
        free(s);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    memcpy(s->wal_path, path, plen);
    memcpy(s->wal_path + plen, "-wal", 5);
    /* Push tokens and PushMagic: only the service's user may read them. */
    if (esim_make_private_db(path, err) != ESIM_OK) {
        free(s->wal_path);
        free(s);
        return ESIM_ESTORE;
    }
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        esim_fail(err, ESIM_ESTORE, "cannot open the store %s: %s", path,
                  s->db ? sqlite3_errmsg(s->db) : "out of memory");
        sq_close(&s->base);
        return ESIM_ESTORE;
    }
    sqlite3_busy_timeout(s->db, 5000);
    /* WAL: readers never block the writer, and a commit is one append to the
     * log. synchronous=FULL fsyncs the log at every commit; NORMAL survives
     * any process crash (the log is in the OS cache) and, with sq_sync()
     * before answers go out (group mode), power cuts too. */
    const char *pragmas =
        s->sync == STORE_SYNC_FULL
            ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;"
            : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;";
    esim_err rc = exec(s, pragmas, err);
    /* SQLite's default page cache (2 MiB) is kept on purpose: a 64 MiB one
     * (PRAGMA cache_size) held the whole 34 MB store of a 20,000-device
     * bench and cost more CPU per round trip (271 against 180 us, same
     * run), with 1.5 KiB more memory per device; mapping the file
     * (mmap_size) was slower too. Counted again (docs/scaling.md, "The
     * store's system calls"): of the ≈ 19 pread(2)s per device half are
     * the checkpoint reading the log back, which neither changes; a
     * 16 MiB cache or a mapping saves the other half (≈ 9 a device). */
    if (rc == ESIM_OK)
        rc = migrate(s, err);
    /* The log exists now (migrate read the database through it). */
    if (rc == ESIM_OK && s->sync == STORE_SYNC_GROUP &&
        (s->wal_fd = open(s->wal_path, O_RDONLY | O_CLOEXEC)) < 0)
        rc = esim_fail(err, ESIM_ESTORE, "cannot open the store's log %s for syncing", s->wal_path);
    if (rc != ESIM_OK) {
        if (err) {
            esim_error tmp = *err;
            esim_fail(err, rc, "%s (store %s)", tmp.msg, path);
        }
        sq_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return ESIM_OK;
}
