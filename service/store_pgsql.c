/*
 * store_pgsql.c — the PostgreSQL back end behind the private table of
 * store_internal.h, over libpq. Selected by a libpq URI, "postgres://..." or
 * "postgresql://..." (so host, user, database, sslmode, service=NAME of a
 * pg_service.conf and the PG* environment variables all work as libpq says).
 *
 * Each step is one prepared statement inside the front's transaction (BEGIN
 * ... COMMIT, or a savepoint when operations nest). Several service
 * instances may share one database, so the steps that pick work lock what
 * they pick and skip what another instance holds (FOR UPDATE SKIP LOCKED):
 * a push debt is paid by one instance, an outbox row is claimed by one; a
 * device's next command is locked (FOR UPDATE, waiting: store.c's LOCK
 * ORDER), so it is handed out by one transaction at a time; an expiry is
 * logged once. The schema is the SQLite back
 * end's, version for version, in PostgreSQL's types; the migrations run in
 * one transaction under an advisory lock, so instances starting together
 * migrate once. The schema lives in the first schema of search_path (made
 * when missing), so one database can hold several stores (the tests use
 * options=-csearch_path=NAME for a fresh store per case).
 *
 * A lost connection (the database restarted) fails the operation in flight
 * with ESIM_ESTORE, its transaction undone by the server; the next operation
 * reconnects. Every statement runs under statement_timeout (5 s unless the
 * spec sets one), so a stuck query ends as a failed operation, not a hung
 * service.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "core/internal.h"
#include "service/store.h"
#include "service/store_internal.h"

/* ---- schema ---------------------------------------------------------------
 * The SQLite back end's migrations, same numbers, PostgreSQL types: BIGINT
 * for times and counters, BYTEA for bodies, BIGSERIAL for the ordered ids.
 * A migration added there is added here with the same number. */
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
        " enrolled_at BIGINT NOT NULL DEFAULT 0,"
        " checked_out_at BIGINT NOT NULL DEFAULT 0,"
        " token_updated_at BIGINT NOT NULL DEFAULT 0,"
        " last_seen_at BIGINT NOT NULL DEFAULT 0,"
        " push_due_at BIGINT NOT NULL DEFAULT 0);"
        "CREATE INDEX devices_push_due ON devices(push_due_at) WHERE push_due_at > 0;"
        "CREATE TABLE commands ("
        " uuid TEXT PRIMARY KEY,"
        " request_type TEXT NOT NULL,"
        " body BYTEA NOT NULL,"
        " priority INTEGER NOT NULL DEFAULT 0,"
        " created_at BIGINT NOT NULL,"
        " expires_at BIGINT NOT NULL DEFAULT 0);"
        "CREATE TABLE queue ("
        " id BIGSERIAL PRIMARY KEY,"
        " udid TEXT NOT NULL REFERENCES devices(udid),"
        " command_uuid TEXT NOT NULL REFERENCES commands(uuid),"
        " priority INTEGER NOT NULL DEFAULT 0,"
        " expires_at BIGINT NOT NULL DEFAULT 0,"
        " state TEXT NOT NULL DEFAULT 'queued',"
        " active INTEGER NOT NULL DEFAULT 1,"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " not_now_count INTEGER NOT NULL DEFAULT 0,"
        " enqueued_at BIGINT NOT NULL DEFAULT 0,"
        " pushed_at BIGINT NOT NULL DEFAULT 0,"
        " sent_at BIGINT NOT NULL DEFAULT 0,"
        " answered_at BIGINT NOT NULL DEFAULT 0,"
        " updated_at BIGINT NOT NULL DEFAULT 0,"
        " error_chain TEXT,"
        " result BYTEA,"
        " UNIQUE (udid, command_uuid));"
        "CREATE INDEX queue_delivery ON queue(udid, priority DESC, id) WHERE active = 1;"
        "CREATE INDEX queue_command ON queue(command_uuid);"
        "CREATE INDEX queue_expiry ON queue(expires_at) WHERE active = 1 AND expires_at > 0;"
        "CREATE TABLE events ("
        " id BIGSERIAL PRIMARY KEY,"
        " at BIGINT NOT NULL,"
        " kind TEXT NOT NULL,"
        " udid TEXT,"
        " command_uuid TEXT,"
        " detail TEXT,"
        " raw BYTEA);"},
    {2, "CREATE INDEX events_udid ON events(udid, id);"},
    {3, "DROP INDEX queue_command; CREATE INDEX queue_command ON queue(command_uuid, udid);"},
    {4, "CREATE TABLE campaigns ("
        " id TEXT PRIMARY KEY,"
        " name TEXT NOT NULL DEFAULT '',"
        " definition TEXT NOT NULL,"
        " state INTEGER NOT NULL,"
        " created_ms BIGINT NOT NULL,"
        " updated_ms BIGINT NOT NULL);"
        "CREATE TABLE campaign_devices ("
        " campaign TEXT NOT NULL,"
        " idx BIGINT NOT NULL,"
        " udid TEXT NOT NULL,"
        " eid TEXT NOT NULL DEFAULT '',"
        " iccid TEXT NOT NULL DEFAULT '',"
        " state INTEGER NOT NULL DEFAULT 0,"
        " step INTEGER NOT NULL DEFAULT 0,"
        " retries INTEGER NOT NULL DEFAULT 0,"
        " verify_tries INTEGER NOT NULL DEFAULT 0,"
        " flags INTEGER NOT NULL DEFAULT 0,"
        " pushes INTEGER NOT NULL DEFAULT 0,"
        " not_now BIGINT NOT NULL DEFAULT 0,"
        " changed_ms BIGINT NOT NULL DEFAULT 0,"
        " next_ms BIGINT NOT NULL DEFAULT 0,"
        " deadline_ms BIGINT NOT NULL DEFAULT 0,"
        " last_push_ms BIGINT NOT NULL DEFAULT 0,"
        " push_state INTEGER NOT NULL DEFAULT 0,"
        " command_uuid TEXT NOT NULL DEFAULT '',"
        " reason TEXT,"
        " PRIMARY KEY (campaign, idx));"
        "CREATE INDEX campaign_devices_udid ON campaign_devices(udid);"
        "CREATE TABLE campaign_commands ("
        " id BIGSERIAL PRIMARY KEY,"
        " uuid TEXT NOT NULL UNIQUE,"
        " campaign TEXT NOT NULL,"
        " step INTEGER NOT NULL);"
        "CREATE INDEX campaign_commands_campaign ON campaign_commands(campaign, id);"
        "CREATE TABLE eid_manifest ("
        " serial TEXT PRIMARY KEY,"
        " eid TEXT NOT NULL,"
        " imported_ms BIGINT NOT NULL DEFAULT 0);"
        "CREATE TABLE activation_codes ("
        " eid TEXT PRIMARY KEY,"
        " code TEXT NOT NULL,"
        " smdp TEXT NOT NULL DEFAULT '',"
        " matching_id TEXT NOT NULL DEFAULT '',"
        " iccid TEXT NOT NULL DEFAULT '',"
        " imported_ms BIGINT NOT NULL DEFAULT 0);"
        "CREATE TABLE device_groups ("
        " name TEXT PRIMARY KEY,"
        " created_ms BIGINT NOT NULL DEFAULT 0);"
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
        " verified_ms BIGINT NOT NULL DEFAULT 0,"
        " updated_ms BIGINT NOT NULL DEFAULT 0);"},
    {5, "CREATE INDEX devices_cert ON devices(cert_sha256) WHERE cert_sha256 <> '';"},
    {6, "ALTER TABLE devices ADD COLUMN token_update_tally INTEGER NOT NULL DEFAULT 0;"
        "ALTER TABLE devices ADD COLUMN bootstrap_token BYTEA;"},
    {7, "CREATE TABLE audit ("
        " id BIGSERIAL PRIMARY KEY,"
        " at BIGINT NOT NULL,"
        " who TEXT NOT NULL,"
        " role TEXT NOT NULL DEFAULT '',"
        " method TEXT NOT NULL,"
        " target TEXT NOT NULL,"
        " status INTEGER NOT NULL DEFAULT 0,"
        " detail TEXT NOT NULL DEFAULT '');"},
    {8, "ALTER TABLE devices ADD COLUMN platform TEXT NOT NULL DEFAULT 'apple';"
        "ALTER TABLE campaign_devices ADD COLUMN platform INTEGER NOT NULL DEFAULT 0;"},
    {9, "CREATE TABLE webhook_outbox ("
        " id BIGSERIAL PRIMARY KEY,"
        " url_key BIGINT NOT NULL,"
        " created_at BIGINT NOT NULL,"
        " body BYTEA NOT NULL);"},
    /* 10: IoT eUICCs the eIM manages (SGP.32) and the packages signed for them. */
    {10, "CREATE TABLE iot_devices ("
         " eid TEXT PRIMARY KEY,"
         " state TEXT NOT NULL,"
         " association_token BIGINT NOT NULL DEFAULT 0,"
         " counter BIGINT NOT NULL DEFAULT 0,"
         " euicc_cert BYTEA,"
         " last_poll_ms BIGINT NOT NULL DEFAULT 0,"
         " registered_ms BIGINT NOT NULL DEFAULT 0,"
         " updated_ms BIGINT NOT NULL DEFAULT 0,"
         " last_error TEXT NOT NULL DEFAULT '');"
         "CREATE TABLE iot_packages ("
         " id BIGSERIAL PRIMARY KEY,"
         " command_uuid TEXT NOT NULL,"
         " eid TEXT NOT NULL,"
         " kind TEXT NOT NULL,"
         " state TEXT NOT NULL,"
         " counter BIGINT NOT NULL DEFAULT 0,"
         " created_ms BIGINT NOT NULL DEFAULT 0,"
         " sent_ms BIGINT NOT NULL DEFAULT 0,"
         " answered_ms BIGINT NOT NULL DEFAULT 0,"
         " summary TEXT NOT NULL DEFAULT '',"
         " result_words TEXT,"
         " error TEXT NOT NULL DEFAULT '',"
         " request BYTEA,"
         " result BYTEA,"
         " UNIQUE (command_uuid, eid));"
         "CREATE INDEX iot_packages_eid ON iot_packages(eid, id);"},
    {11, "CREATE TABLE leases ("
         " name TEXT PRIMARY KEY,"
         " owner TEXT NOT NULL,"
         " expires_at BIGINT NOT NULL);"
         "ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';"
         "ALTER TABLE webhook_outbox ADD COLUMN claimed_until BIGINT NOT NULL DEFAULT 0;"},
    /* A campaign row's version, one more at every write: a pause, resume or
     * cancel from an instance that does not drive the campaign is a
     * compare-and-set on it (esim_store_campaign_set_state). */
    {12, "ALTER TABLE campaigns ADD COLUMN version BIGINT NOT NULL DEFAULT 1;"},
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
         " created_ms BIGINT NOT NULL);"
         "CREATE INDEX iot_relay_sessions_created ON iot_relay_sessions(created_ms);"},
    /* 14: a campaign's pushes and commands over its whole life, written by
     * whichever instance holds its lease, so the one that takes it over
     * counts on from there (esim_store_campaign_totals). */
    {14, "ALTER TABLE campaigns ADD COLUMN pushes BIGINT NOT NULL DEFAULT 0;"
         "ALTER TABLE campaigns ADD COLUMN commands BIGINT NOT NULL DEFAULT 0;"},
    /* New migrations go here, with the SQLite back end's next number. */
};

/* Any number, as long as every instance uses the same one: instances
 * starting together queue on it and migrate one after the other. */
#define MIGRATION_LOCK_KEY 0x65736d6d /* "esmm" */
#define IOT_LOCK_CLASS "6909812"      /* "iot" */

/* ---- statements ------------------------------------------------------------ */

#define DEVICE_COLS                                                                                \
    "udid, is_enrollment_id, enrolled, topic, serial_number, os_version, build_version,"           \
    " product_name, model, device_name, imei, eid, cert_sha256, push_token, push_magic,"           \
    " push_state, enrolled_at, checked_out_at, token_updated_at, last_seen_at, push_due_at,"       \
    " token_update_tally, platform"

#define ENTRY_COLS                                                                                 \
    "q.udid, q.command_uuid, c.request_type, q.state, q.priority, q.attempts, q.not_now_count,"    \
    " q.enqueued_at, q.pushed_at, q.sent_at, q.answered_at, q.updated_at, q.expires_at,"           \
    " q.error_chain, q.result"

enum {
    S_DEV_IDENTITY,
    S_DEV_BY_CERT,
    S_DEV_AUTH_UPSERT,
    S_DEV_TOKEN,
    S_DEV_CHECKOUT,
    S_DEV_SEEN,
    S_DEV_SEEN_EID,
    S_DEV_SEEN_VERIFIED,
    S_DEV_GET,
    S_DEV_BRIEF,
    S_DEV_LIST,
    S_DEV_SEARCH,
    S_FLEET,
    S_DEV_PUSH_DUE_AT,
    S_DEV_PUSH_STATE,
    S_DEV_TAKE_DUE,
    S_DEV_DUE_CLEAR,
    S_Q_FIND,
    S_Q_ANSWER,
    S_Q_ANSWER_SENT,
    S_Q_ANSWER_SENT_LOGGED,
    S_Q_NEXT,
    S_Q_MARK_SENT,
    S_Q_MARK_SENT_LOGGED,
    S_Q_INSERT,
    S_Q_ENQUEUE_LOGGED,
    S_Q_CANCEL_ALL,
    S_Q_CANCEL_ONE,
    S_Q_PUSHED,
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
    S_OUTBOX_DEL_IDS,
    S_OUTBOX_LIST,
    S_IOT_GET,
    S_IOT_GET_LOCKED,
    S_IOT_KEY_LOCK,
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
    S_LEASE,
    S_LEASE_HOLDER,
    S_LEASE_RELEASE,
    S_NOTIFY,
    S_OUTBOX_CLAIM,
    S_OUTBOX_RENEW,
    S_COUNT
};

#define IOT_PKG_COLS                                                                               \
    "command_uuid, eid, kind, state, counter, created_ms, sent_ms, answered_ms, summary,"          \
    " result_words, error, request, result, smdp"

static const char *const statement_sql[S_COUNT] = {
    [S_DEV_IDENTITY] =
        "SELECT enrolled, cert_sha256, enrolled_at, serial_number FROM devices WHERE udid = $1",
    /* "<> ''" lets the planner use the partial index devices_cert: a
     * bound value alone does not prove it, and without it every
     * Authenticate scanned the whole table (O(fleet) per enrolment). */
    [S_DEV_BY_CERT] = "SELECT udid FROM devices WHERE cert_sha256 = $1 AND cert_sha256 <> ''"
                      " AND udid <> $2 LIMIT 1",
    [S_DEV_AUTH_UPSERT] =
        "INSERT INTO devices (udid, is_enrollment_id, enrolled, topic, serial_number, os_version,"
        " build_version, product_name, model, device_name, imei, cert_sha256, push_token,"
        " push_magic, push_state, enrolled_at, last_seen_at, platform)"
        " VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, '', '', 'none', $12, $12, $14)"
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
        " push_token = CASE WHEN $13::int <> 0 THEN devices.push_token ELSE '' END,"
        " push_magic = CASE WHEN $13::int <> 0 THEN devices.push_magic ELSE '' END,"
        " push_state = CASE WHEN $13::int <> 0 THEN devices.push_state ELSE 'none' END,"
        " token_update_tally = 0,"
        " enrolled_at = CASE WHEN devices.enrolled = 1 THEN devices.enrolled_at ELSE "
        "excluded.enrolled_at END,"
        " last_seen_at = excluded.last_seen_at, platform = excluded.platform",
    [S_DEV_TOKEN] = "UPDATE devices SET topic = $2, push_token = $3, push_magic = $4,"
                    " push_state = 'valid', token_updated_at = $5, last_seen_at = $5,"
                    " token_update_tally = token_update_tally + 1 WHERE udid = $1"
                    " RETURNING token_update_tally",
    [S_DEV_CHECKOUT] = "UPDATE devices SET enrolled = 0, push_token = '', push_magic = '',"
                       " push_state = 'none', push_due_at = 0, checked_out_at = $2,"
                       " token_update_tally = 0,"
                       " last_seen_at = $2 WHERE udid = $1",
    [S_DEV_SEEN] = "UPDATE devices SET last_seen_at = $2 WHERE udid = $1",
    [S_DEV_SEEN_EID] = "UPDATE devices SET last_seen_at = $2, eid = $3 WHERE udid = $1",
    /* check_identity's conditions for a request that passes as it is. */
    [S_DEV_SEEN_VERIFIED] =
        "UPDATE devices SET last_seen_at = $2, eid = coalesce($4, eid) WHERE udid = $1"
        " AND enrolled = 1 AND ($3 = '' OR (cert_sha256 <> '' AND cert_sha256 = $3))",
    [S_DEV_GET] = "SELECT " DEVICE_COLS " FROM devices WHERE udid = $1",
    [S_DEV_BRIEF] = "SELECT enrolled, serial_number, os_version, eid, platform FROM devices"
                    " WHERE udid = $1",
    [S_DEV_LIST] = "SELECT " DEVICE_COLS " FROM devices WHERE udid > $1 ORDER BY udid LIMIT $2",
    [S_DEV_SEARCH] = "SELECT " DEVICE_COLS " FROM devices WHERE udid > $1 AND"
                     " (strpos(lower(udid), $3) > 0 OR strpos(lower(serial_number), $3) > 0 OR"
                     " strpos(lower(device_name), $3) > 0 OR strpos(lower(product_name), $3) > 0"
                     " OR strpos(lower(eid), $3) > 0) ORDER BY udid LIMIT $2",
    [S_FLEET] = "SELECT d.product_name, d.model, d.enrolled, d.push_state,"
                " (coalesce(f.verified_ms, 0) > 0)::int, count(*), d.platform FROM devices d"
                " LEFT JOIN device_facts f ON f.udid = d.udid GROUP BY 1, 2, 3, 4, 5, 7",
    [S_DEV_PUSH_DUE_AT] = "UPDATE devices SET push_due_at = $2 WHERE udid = $1"
                          " AND (push_due_at = 0 OR push_due_at > $2)",
    [S_DEV_PUSH_STATE] = "UPDATE devices SET push_state = $2, push_due_at = 0 WHERE udid = $1",
    /* Another instance paying the same debts skips the rows this one holds:
     * each owed push is taken by one instance. */
    [S_DEV_TAKE_DUE] =
        "WITH d AS (SELECT udid, push_due_at FROM devices WHERE push_due_at > 0"
        " AND push_due_at <= $1 ORDER BY push_due_at LIMIT $2 FOR UPDATE SKIP LOCKED),"
        " u AS (UPDATE devices SET push_due_at = 0 FROM d WHERE devices.udid = d.udid"
        " RETURNING devices.udid, d.push_due_at)"
        " SELECT udid FROM u ORDER BY push_due_at, udid",
    [S_DEV_DUE_CLEAR] = "UPDATE devices SET push_due_at = 0 WHERE udid = $1",
    [S_Q_FIND] = "SELECT id, state FROM queue WHERE udid = $1 AND command_uuid = $2 FOR UPDATE",
    [S_Q_ANSWER] =
        "UPDATE queue SET state = $2, active = $3, answered_at = $4, updated_at = $4,"
        " not_now_count = not_now_count + $5, error_chain = $6, result = $7 WHERE id = $1",
    [S_Q_ANSWER_SENT] =
        "UPDATE queue SET state = $3, active = $4, answered_at = $5, updated_at = $5,"
        " not_now_count = not_now_count + $6, error_chain = $7, result = $8"
        " WHERE udid = $1 AND command_uuid = $2 AND state = 'sent'",
    /* The entry chosen is locked until the operation ends. An entry
     * another transaction holds is waited for, not passed over (store.c,
     * LOCK ORDER): a push being recorded holds the device's entries, and a
     * request passing over them answered the device with nothing. Two
     * requests of one device already wait for each other on its row
     * (device_seen comes first), so one command is never handed out by two
     * transactions at once. */
    [S_Q_NEXT] = "SELECT q.id, q.command_uuid, c.request_type, c.body FROM queue q"
                 " JOIN commands c ON c.uuid = q.command_uuid"
                 " WHERE q.udid = $1 AND q.active = 1 AND (q.expires_at = 0 OR q.expires_at > $2)"
                 " ORDER BY q.priority DESC, q.id LIMIT $3 FOR UPDATE OF q",
    /* The two steps above with their ledger rows, one round trip each. */
    [S_Q_ANSWER_SENT_LOGGED] =
        "WITH x AS (UPDATE queue SET state = $3, active = $4, answered_at = $5, updated_at = $5,"
        " not_now_count = not_now_count + $6, error_chain = $7, result = $8"
        " WHERE udid = $1 AND command_uuid = $2 AND state = 'sent' RETURNING udid, command_uuid)"
        " INSERT INTO events (at, kind, udid, command_uuid, detail)"
        " SELECT $5::bigint, 'result', udid, command_uuid, $9::text FROM x",
    [S_Q_MARK_SENT_LOGGED] =
        "WITH x AS (UPDATE queue SET state = 'sent', attempts = attempts + 1, sent_at = $2,"
        " updated_at = $2 WHERE id = $1 RETURNING udid, command_uuid)"
        " INSERT INTO events (at, kind, udid, command_uuid, detail)"
        " SELECT $2::bigint, 'sent', udid, command_uuid, $3::text FROM x",
    [S_Q_MARK_SENT] = "UPDATE queue SET state = 'sent', attempts = attempts + 1, sent_at = $2,"
                      " updated_at = $2 WHERE id = $1",
    [S_Q_INSERT] = "INSERT INTO queue (udid, command_uuid, priority, expires_at, state, active,"
                   " enqueued_at, updated_at) VALUES ($1, $2, $3, $4, 'queued', 1, $5, $5)",
    [S_Q_ENQUEUE_LOGGED] =
        "WITH x AS (INSERT INTO queue (udid, command_uuid, priority, expires_at, state, active,"
        " enqueued_at, updated_at) SELECT udid, $2::text, $3::bigint, $4::bigint, 'queued', 1,"
        " $5::bigint, $5::bigint FROM devices WHERE udid = $1 AND enrolled = 1 RETURNING udid)"
        " INSERT INTO events (at, kind, udid, command_uuid, detail)"
        " SELECT $5::bigint, 'enqueued', udid, $2::text, $6::text FROM x",
    [S_Q_CANCEL_ALL] =
        "WITH x AS (UPDATE queue SET state = 'canceled', active = 0, updated_at = $2"
        " WHERE udid = $1 AND active = 1 RETURNING id, udid, command_uuid)"
        " INSERT INTO events (at, kind, udid, command_uuid, detail)"
        " SELECT $2::bigint, $4::text, udid, command_uuid, $3::text FROM x ORDER BY id",
    [S_Q_CANCEL_ONE] =
        "UPDATE queue SET state = 'canceled', active = 0, updated_at = $2 WHERE id = $1",
    [S_Q_PUSHED] = "UPDATE queue SET state = 'pushed', pushed_at = $2, updated_at = $2"
                   " WHERE udid = $1 AND active = 1 AND state IN ('queued', 'not_now')",
    /* One statement: an entry another instance expires at the same time is
     * passed over once it is no longer active, so each is logged once. */
    [S_Q_EXPIRE] = "WITH x AS (UPDATE queue SET state = 'expired', active = 0, updated_at = $1"
                   " WHERE active = 1 AND expires_at > 0 AND expires_at <= $1"
                   " RETURNING id, udid, command_uuid)"
                   " INSERT INTO events (at, kind, udid, command_uuid)"
                   " SELECT $1::bigint, $2::text, udid, command_uuid FROM x ORDER BY id",
    [S_Q_BY_COMMAND] =
        "SELECT " ENTRY_COLS " FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.command_uuid = $1 AND q.udid > $2 ORDER BY q.udid LIMIT $3",
    [S_Q_COUNT_BY_COMMAND] =
        "SELECT state, count(*) FROM queue WHERE command_uuid = $1 GROUP BY state",
    [S_Q_ACTIVE_FOR_DEVICE] =
        "SELECT " ENTRY_COLS " FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.udid = $1 AND q.active = 1 ORDER BY q.priority DESC, q.id",
    [S_Q_DONE_FOR_DEVICE] =
        "SELECT " ENTRY_COLS " FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.udid = $1 AND q.active = 0 ORDER BY q.id DESC LIMIT 100",
    [S_CMD_INSERT] =
        "INSERT INTO commands (uuid, request_type, body, priority, created_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
    [S_CMD_GET] =
        "SELECT uuid, request_type, priority, created_at, expires_at FROM commands WHERE uuid = $1",
    [S_EVENT] = "INSERT INTO events (at, kind, udid, command_uuid, detail, raw) VALUES ($1, $2,"
                " $3, $4, $5, $6)",
    [S_EVENTS_LIST] = "SELECT id, at, kind, udid, command_uuid, detail, raw FROM events"
                      " WHERE udid = $1 AND id > $2 ORDER BY id LIMIT $3",
    [S_IOT_GET] = "SELECT eid, state, association_token, counter, last_poll_ms, registered_ms, "
                  "updated_ms, last_error, euicc_cert FROM iot_devices WHERE eid = $1",
    [S_IOT_GET_LOCKED] = "SELECT eid, state, association_token, counter, last_poll_ms, "
                         "registered_ms, updated_ms, last_error, euicc_cert FROM iot_devices "
                         "WHERE eid = $1 FOR UPDATE",
    /* An EID with no record yet: FOR UPDATE has no row to lock, so the key
     * itself is locked (in a key space of its own beside the migrations'
     * single-key lock), until the transaction ends. */
    [S_IOT_KEY_LOCK] = "SELECT pg_advisory_xact_lock(" IOT_LOCK_CLASS ", hashtext($1))::text",
    [S_IOT_PUT] =
        "INSERT INTO iot_devices (eid, state, association_token, counter, last_poll_ms, "
        "registered_ms, updated_ms, last_error, euicc_cert) VALUES ($1, $2, $3, $4, $5, $6, $7,"
        " $8, $9) ON CONFLICT (eid) DO UPDATE SET state = excluded.state,"
        " association_token = excluded.association_token, counter = excluded.counter,"
        " last_poll_ms = excluded.last_poll_ms, registered_ms = excluded.registered_ms,"
        " updated_ms = excluded.updated_ms, last_error = excluded.last_error,"
        " euicc_cert = excluded.euicc_cert",
    [S_IOT_LIST] =
        "SELECT eid, state, association_token, counter, last_poll_ms, registered_ms, updated_ms, "
        "last_error FROM iot_devices WHERE eid > $1::text ORDER BY eid LIMIT $2",
    [S_IOT_PKG_PUT] =
        "INSERT INTO iot_packages (command_uuid, eid, kind, state, counter, created_ms, sent_ms, "
        "answered_ms, summary, result_words, error, request, result, smdp) VALUES ($1, $2, $3, $4, "
        "$5, "
        "$6, $7, $8, $9, $10,"
        " $11, $12, $13, $14) ON CONFLICT (command_uuid, eid) DO UPDATE SET kind = excluded.kind,"
        " state = excluded.state, counter = excluded.counter, sent_ms = excluded.sent_ms,"
        " answered_ms = excluded.answered_ms, summary = excluded.summary,"
        " result_words = excluded.result_words, error = excluded.error,"
        " request = excluded.request, result = excluded.result,"
        " smdp = CASE WHEN excluded.smdp = '' THEN iot_packages.smdp ELSE excluded.smdp END",
    /* A statement for each key given, every one by an index (as in
     * store_sqlite.c): the generic plan of one statement with
     * "($1 = '' OR eid = $1)" reads the whole table. */
    [S_IOT_PKG_LIST] = "SELECT " IOT_PKG_COLS " FROM iot_packages WHERE eid = $1"
                       " ORDER BY id DESC LIMIT $2",
    [S_IOT_PKG_ONE] = "SELECT " IOT_PKG_COLS " FROM iot_packages WHERE command_uuid = $1"
                      " AND eid = $2 ORDER BY id DESC LIMIT $3",
    [S_IOT_PKG_BY_COMMAND] = "SELECT " IOT_PKG_COLS " FROM iot_packages WHERE command_uuid = $1"
                             " ORDER BY id DESC LIMIT $2",
    /* With an EID, by iot_packages_eid (the partial iot_packages_smdp is not
     * provable from "smdp = $2"); without, by iot_packages_smdp, which
     * "smdp <> ''" proves ("ORDER BY state", the index's order: with the
     * table's statistics the planner chose a scan of the table for LIMIT 1,
     * which may pass every other package first; only download triggers
     * have an SM-DP+, so the index's first entry answers). */
    [S_IOT_TRIGGER_FIND] =
        "SELECT 1 FROM iot_packages WHERE eid = $1 AND smdp = $2 AND kind = 'download'"
        " AND ($3::bigint = 0 OR state = 'sent') LIMIT 1",
    [S_IOT_TRIGGER_ANY] = "SELECT 1 FROM iot_packages WHERE smdp = $1 AND smdp <> ''"
                          " AND kind = 'download' ORDER BY state LIMIT 1",
    [S_IOT_TRIGGER_ANY_SENT] = "SELECT 1 FROM iot_packages WHERE smdp = $1 AND smdp <> ''"
                               " AND state = 'sent' AND kind = 'download' LIMIT 1",
    [S_RELAY_PUT] = "INSERT INTO iot_relay_sessions (txid, smdp, eid, created_ms) VALUES ($1, $2,"
                    " $3, $4) ON CONFLICT (txid) DO UPDATE SET smdp = excluded.smdp,"
                    " eid = excluded.eid, created_ms = excluded.created_ms",
    [S_RELAY_EXPIRE] = "DELETE FROM iot_relay_sessions WHERE created_ms < $1",
    [S_RELAY_GET] = "SELECT smdp, eid, created_ms FROM iot_relay_sessions WHERE txid = $1",
    [S_RELAY_DROP] = "DELETE FROM iot_relay_sessions WHERE txid = $1",
    /* The row and its claim (when $5 > 0) in one statement. */
    [S_OUTBOX_ADD] =
        "INSERT INTO webhook_outbox (url_key, created_at, body, claimed_by,"
        " claimed_until) VALUES ($1, $2, $3, $4, CASE WHEN $5::bigint > 0 THEN"
        " (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $5::bigint ELSE 0 END)"
        " RETURNING id",
    [S_OUTBOX_DEL] = "DELETE FROM webhook_outbox WHERE id = $1",
    [S_OUTBOX_DEL_IDS] = "DELETE FROM webhook_outbox WHERE id = ANY($1::bigint[])",
    [S_OUTBOX_LIST] = "SELECT id, url_key, created_at, body FROM webhook_outbox WHERE id > $1"
                      " ORDER BY id LIMIT $2",
    [S_AUDIT_ADD] = "INSERT INTO audit (at, who, role, method, target, status, detail)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7)",
    [S_AUDIT_LIST] = "SELECT id, at, who, role, method, target, status, detail FROM audit"
                     " WHERE id > $1 ORDER BY id LIMIT $2",
    [S_STATS_DEVICES] =
        "SELECT count(*), coalesce(sum(enrolled), 0),"
        " coalesce(sum(CASE WHEN enrolled = 1 AND push_state = 'valid' THEN 1 ELSE 0 END), 0)"
        " FROM devices",
    [S_STATS_QUEUE] = "SELECT state, count(*) FROM queue GROUP BY state",
    [S_STATS_EVENTS] = "SELECT coalesce(max(id), 0) FROM events",
    [S_Q_LAST_SENT] =
        "SELECT q.id, q.sent_at FROM queue q JOIN commands c ON c.uuid = q.command_uuid"
        " WHERE q.udid = $1 AND c.request_type = $3"
        " AND q.state IN ('sent', 'acknowledged') AND q.sent_at >= $2"
        " ORDER BY q.sent_at DESC LIMIT 1",
    [S_Q_RETIRE] = "UPDATE queue SET active = 0, updated_at = $2 WHERE id = $1",
    [S_DEV_REENROLLED] = "UPDATE devices SET enrolled_at = $2 WHERE udid = $1",
    [S_EVENT_LATEST] = "SELECT id, at, kind, udid, command_uuid, detail FROM events"
                       " WHERE udid = $1 AND kind IN ($2, $3, $4, $5) ORDER BY id DESC LIMIT 1",
    [S_CAMP_PUT] = "INSERT INTO campaigns (id, name, definition, state, created_ms, updated_ms)"
                   " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET"
                   " definition = excluded.definition, state = excluded.state,"
                   " updated_ms = excluded.updated_ms, version = campaigns.version + 1",
    [S_CAMP_CMD_PUT] = "INSERT INTO campaign_commands (uuid, campaign, step) VALUES ($1, $2, $3)"
                       " ON CONFLICT (uuid) DO UPDATE SET campaign = excluded.campaign,"
                       " step = excluded.step",
    [S_CAMP_DEV_PUT] =
        "INSERT INTO campaign_devices (campaign, idx, udid, eid, iccid, state, step, retries,"
        " verify_tries, flags, pushes, not_now, changed_ms, next_ms, deadline_ms, last_push_ms,"
        " push_state, command_uuid, reason, platform) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        " $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
        " ON CONFLICT (campaign, idx) DO UPDATE SET platform = excluded.platform,"
        " udid = excluded.udid, eid = excluded.eid, iccid = excluded.iccid,"
        " state = excluded.state, step = excluded.step, retries = excluded.retries,"
        " verify_tries = excluded.verify_tries, flags = excluded.flags,"
        " pushes = excluded.pushes, not_now = excluded.not_now,"
        " changed_ms = excluded.changed_ms, next_ms = excluded.next_ms,"
        " deadline_ms = excluded.deadline_ms, last_push_ms = excluded.last_push_ms,"
        " push_state = excluded.push_state, command_uuid = excluded.command_uuid,"
        " reason = excluded.reason",
    [S_CAMP_LIST] = "SELECT id, name, definition, state, created_ms, updated_ms, version,"
                    " pushes, commands"
                    " FROM campaigns ORDER BY created_ms, id",
    /* Locked until the operation ends: a compare-and-set of the state. */
    [S_CAMP_STATE_GET] = "SELECT state, version FROM campaigns WHERE id = $1 FOR UPDATE",
    [S_CAMP_STATE_PUT] = "UPDATE campaigns SET state = $2, updated_ms = $3,"
                         " version = version + 1 WHERE id = $1",
    /* Not a change of the row's state: its version stays. */
    [S_CAMP_TOTALS_PUT] = "UPDATE campaigns SET pushes = $2, commands = $3 WHERE id = $1",
    [S_CAMP_DEVS] =
        "SELECT idx, udid, eid, iccid, state, step, retries, verify_tries, flags, pushes,"
        " not_now, changed_ms, next_ms, deadline_ms, last_push_ms, push_state, command_uuid,"
        " reason, platform FROM campaign_devices WHERE campaign = $1 ORDER BY idx",
    [S_CAMP_CMDS] = "SELECT uuid, step FROM campaign_commands WHERE campaign = $1 ORDER BY id",
    [S_MANIFEST_PUT] = "INSERT INTO eid_manifest (serial, eid, imported_ms) VALUES ($1, $2, $3)"
                       " ON CONFLICT (serial) DO UPDATE SET eid = excluded.eid,"
                       " imported_ms = excluded.imported_ms",
    [S_CODE_PUT] =
        "INSERT INTO activation_codes (eid, code, smdp, matching_id, iccid, imported_ms)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (eid) DO UPDATE SET code = excluded.code,"
        " smdp = excluded.smdp, matching_id = excluded.matching_id, iccid = excluded.iccid,"
        " imported_ms = excluded.imported_ms",
    [S_MANIFEST_GET] = "SELECT eid FROM eid_manifest WHERE serial = $1",
    [S_CODE_GET] = "SELECT iccid, matching_id FROM activation_codes WHERE eid = $1",
    [S_GROUP_EXISTS] = "SELECT 1 FROM device_groups WHERE name = $1",
    [S_GROUP_CREATE] = "INSERT INTO device_groups (name, created_ms) VALUES ($1, $2)",
    [S_GROUP_DROP_MEMBERS] = "DELETE FROM device_group_members WHERE grp = $1",
    [S_GROUP_DROP] = "DELETE FROM device_groups WHERE name = $1",
    [S_GROUP_ADD] = "INSERT INTO device_group_members (grp, udid) VALUES ($1, $2)"
                    " ON CONFLICT (grp, udid) DO NOTHING",
    [S_GROUP_REMOVE] = "DELETE FROM device_group_members WHERE grp = $1 AND udid = $2",
    [S_GROUPS_LIST] = "SELECT g.name, (SELECT count(*) FROM device_group_members m"
                      " WHERE m.grp = g.name) FROM device_groups g ORDER BY g.name",
    [S_GROUP_MEMBERS] = "SELECT udid FROM device_group_members WHERE grp = $1 ORDER BY udid",
    [S_TAG_DEVICES] = "SELECT udid FROM device_tags WHERE tag = $1 ORDER BY udid",
    [S_DEVICE_TAGS] = "SELECT tag FROM device_tags WHERE udid = $1 ORDER BY tag",
    [S_TAG_ADD] = "INSERT INTO device_tags (udid, tag) VALUES ($1, $2)"
                  " ON CONFLICT (udid, tag) DO NOTHING",
    [S_TAG_REMOVE] = "DELETE FROM device_tags WHERE udid = $1 AND tag = $2",
    [S_FACTS_PUT] =
        "INSERT INTO device_facts (udid, supervised, os_version, eid, iccid, verified_ms,"
        " updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (udid) DO UPDATE SET"
        " supervised = CASE WHEN excluded.supervised >= 0 THEN excluded.supervised"
        " ELSE device_facts.supervised END,"
        " os_version = CASE WHEN excluded.os_version <> '' THEN excluded.os_version"
        " ELSE device_facts.os_version END,"
        " eid = CASE WHEN excluded.eid <> '' THEN excluded.eid ELSE device_facts.eid END,"
        " iccid = CASE WHEN excluded.eid <> '' THEN excluded.iccid ELSE device_facts.iccid END,"
        " verified_ms = CASE WHEN excluded.verified_ms > 0 THEN excluded.verified_ms"
        " ELSE device_facts.verified_ms END, updated_ms = excluded.updated_ms",
    [S_FACTS_GET] = "SELECT supervised, os_version, eid, iccid, verified_ms, updated_ms"
                    " FROM device_facts WHERE udid = $1",
    [S_DEV_BIND_CERT] = "UPDATE devices SET cert_sha256 = $2 WHERE udid = $1",
    [S_DEV_BOOTSTRAP_SET] = "UPDATE devices SET bootstrap_token = $2 WHERE udid = $1",
    [S_DEV_BOOTSTRAP_GET] = "SELECT bootstrap_token FROM devices WHERE udid = $1",
    /* The database's clock, in ms: every instance reckons expiry on it. */
    [S_LEASE] = "INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2,"
                " (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $3)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                " expires_at = excluded.expires_at"
                " WHERE leases.owner = excluded.owner"
                " OR leases.expires_at < (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
                " RETURNING owner",
    [S_LEASE_HOLDER] = "SELECT owner FROM leases WHERE name = $1",
    [S_LEASE_RELEASE] = "DELETE FROM leases WHERE name = $1 AND owner = $2",
    [S_NOTIFY] = "SELECT pg_notify($1, $2)",
    /* Rows another instance is claiming right now are skipped, not waited
     * for: two instances scanning at once take different rows. */
    [S_OUTBOX_CLAIM] =
        "UPDATE webhook_outbox SET claimed_by = $1,"
        " claimed_until = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $2"
        " WHERE id IN (SELECT id FROM webhook_outbox WHERE claimed_until <"
        " (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
        " ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)"
        " RETURNING id, url_key, created_at, body",
    [S_OUTBOX_RENEW] = "UPDATE webhook_outbox SET claimed_until ="
                       " (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $2"
                       " WHERE claimed_by = $1",
};

typedef struct {
    store base;
    PGconn *conn;
    char *conninfo;
    char channel[80];       /* the notification channel: "esim_" and the schema */
    bool prepared[S_COUNT]; /* on this connection */
    int depth;              /* operations begun and not ended (they nest) */
    bool tx_failed;         /* a step failed: the transaction can only be undone */
    bool whole;             /* the transaction is a whole unit: no savepoints inside */
    bool unique_violation;  /* the last statement broke a unique constraint */
    /* For /metrics (esim_store_metrics). */
    uint64_t queries, failures, reconnects, tx_commits, tx_rollbacks, timeouts;
} pg_store;

#define MAX_PARAMS 24

static esim_err pg_fail(pg_store *s, esim_error *err, const char *what, const PGresult *res)
{
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(s->conn);
    char clean[400];
    snprintf(clean, sizeof clean, "%s", msg ? msg : "");
    size_t n = strlen(clean);
    while (n && (clean[n - 1] == '\n' || clean[n - 1] == ' '))
        clean[--n] = '\0';
    s->failures++;
    /* 57014 query_canceled: statement_timeout ran out (nobody else cancels). */
    const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (code && strcmp(code, "57014") == 0)
        s->timeouts++;
    char line[sizeof clean + 200];
    snprintf(line, sizeof line, "store (pgsql): %s: %s", what, clean);
    esim_copy_text(s->base.last_error, sizeof s->base.last_error, line);
    return esim_fail(err, ESIM_ESTORE, "%s", line);
}

/* The connection is usable, or made so (the server restarted, the network
 * came back). Only between operations: a transaction cut off with its
 * connection is already undone by the server, and its operation failed. */
static esim_err session_setup(pg_store *s, esim_error *err);

static esim_err reconnect(pg_store *s, esim_error *err)
{
    PQreset(s->conn);
    s->reconnects++;
    memset(s->prepared, 0, sizeof s->prepared);
    if (PQstatus(s->conn) != CONNECTION_OK)
        return pg_fail(s, err, "reconnect", NULL);
    return session_setup(s, err);
}

static esim_err ensure_conn(pg_store *s, esim_error *err)
{
    if (PQstatus(s->conn) == CONNECTION_OK)
        return ESIM_OK;
    return reconnect(s, err);
}

/*
 * Runs statement |id| with parameters from |fmt|: 't' text (NULL is SQL
 * NULL), 'T' text (NULL is ''), 'i' int64, 'b' bytes (pointer, size_t; NULL
 * is SQL NULL). Returns the result (PQclear it) or NULL with |err| set.
 */
/* The server said farewell to this session before our statement (it was
 * stopped or restarted, or is starting): the statement was not run. */
static bool farewell(const PGresult *res)
{
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return code && strncmp(code, "57P0", 4) == 0;
}

/* Runs statement |id| with the parameters |fmt| describes; its rows in
 * text form, or in binary form when |binary| (a bytea column as its bytes,
 * without the hex text to decode; integers in network byte order). */
static PGresult *vrun(pg_store *s, esim_error *err, int id, bool binary, const char *fmt,
                      va_list ap)
{
    s->unique_violation = false;
    if (s->depth == 0 && ensure_conn(s, err) != ESIM_OK)
        return NULL;
    const char *values[MAX_PARAMS];
    int lengths[MAX_PARAMS], formats[MAX_PARAMS];
    char nums[MAX_PARAMS][24];
    int n = 0;
    for (; *fmt && n < MAX_PARAMS; fmt++, n++) {
        lengths[n] = 0;
        formats[n] = 0;
        switch (*fmt) {
        case 't':
            values[n] = va_arg(ap, const char *);
            break;
        case 'T':
            values[n] = va_arg(ap, const char *);
            if (!values[n])
                values[n] = "";
            break;
        case 'i': {
            /* Not snprintf: ≈ 700 instructions a number, several a round trip. */
            int64_t v = va_arg(ap, int64_t);
            nums[n][0] = '-';
            esim_format_u64(nums[n] + (v < 0), v < 0 ? 0 - (uint64_t)v : (uint64_t)v);
            values[n] = nums[n];
            break;
        }
        case 'b': {
            const void *v = va_arg(ap, const void *);
            size_t len = va_arg(ap, size_t);
            values[n] = v ? (len ? (const char *)v : "") : NULL;
            lengths[n] = (int)len;
            formats[n] = 1;
            break;
        }
        }
    }
    char name[22] = "s";
    esim_format_u64(name + 1, (uint64_t)id);
    /* Outside a transaction, a connection the server left since the last
     * operation (a restart: libpq may not have noticed yet) is remade and
     * the statement tried once more: nothing of it ran. Inside one, the
     * operation fails whole and its caller answers 503. */
    for (bool again = s->depth == 0;; again = false) {
        if (!s->prepared[id]) {
            PGresult *res = PQprepare(s->conn, name, statement_sql[id], 0, NULL);
            bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
            if (!ok && again && (PQstatus(s->conn) != CONNECTION_OK || farewell(res))) {
                PQclear(res);
                if (reconnect(s, err) != ESIM_OK)
                    return NULL;
                continue;
            }
            if (!ok)
                pg_fail(s, err, "prepare", res);
            PQclear(res);
            if (!ok) {
                s->tx_failed = s->depth > 0;
                return NULL;
            }
            s->prepared[id] = true;
        }
        s->queries++;
        PGresult *res = PQexecPrepared(s->conn, name, n, values, lengths, formats, binary);
        ExecStatusType st = PQresultStatus(res);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            if (again && farewell(res)) {
                PQclear(res);
                if (reconnect(s, err) != ESIM_OK)
                    return NULL;
                continue;
            }
            pg_fail(s, err, statement_sql[id], res);
            const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            s->unique_violation = code && strcmp(code, "23505") == 0;
            PQclear(res);
            s->tx_failed = s->depth > 0;
            return NULL;
        }
        return res;
    }
}

static PGresult *run(pg_store *s, esim_error *err, int id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *res = vrun(s, err, id, false, fmt, ap);
    va_end(ap);
    return res;
}

/* As run, the rows in binary form (vrun). */
static PGresult *run_binary(pg_store *s, esim_error *err, int id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *res = vrun(s, err, id, true, fmt, ap);
    va_end(ap);
    return res;
}

/* A statement without rows: ESIM_OK when it ran. */
static esim_err exec_stmt(pg_store *s, esim_error *err, int id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *res = vrun(s, err, id, false, fmt, ap);
    va_end(ap);
    if (!res)
        return ESIM_ESTORE;
    PQclear(res);
    return ESIM_OK;
}

static void col_text(const PGresult *r, int row, int col, char *out, size_t out_len)
{
    const char *v = PQgetisnull(r, row, col) ? "" : PQgetvalue(r, row, col);
    esim_copy_text(out, out_len, v);
}

static int64_t col_i64(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static int col_int(const PGresult *r, int row, int col)
{
    return (int)col_i64(r, row, col);
}

/* Of a result in binary form (run_binary): a bigint column, eight bytes,
 * big-endian.
 * Anything else (NULL, another integer type after a schema change) is
 * refused rather than read as a wrong number. */
static bool col_i64_bin(const PGresult *r, int row, int col, int64_t *out)
{
    if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
        return false;
    const unsigned char *v = (const unsigned char *)PQgetvalue(r, row, col);
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | v[i];
    *out = (int64_t)x;
    return true;
}

/* A bytea column of a binary-format result, appended to |out| as it is. */
static esim_err col_bytes_bin(const PGresult *r, int row, int col, esim_buf *out)
{
    int len = PQgetisnull(r, row, col) ? 0 : PQgetlength(r, row, col);
    return len > 0 ? esim_buf_append(out, PQgetvalue(r, row, col), (size_t)len) : ESIM_OK;
}

/* Appends the bytea column (text format, hex) to |out|. */
static esim_err col_bytes(const PGresult *r, int row, int col, esim_buf *out)
{
    if (PQgetisnull(r, row, col))
        return ESIM_OK;
    size_t len = 0;
    unsigned char *v = PQunescapeBytea((const unsigned char *)PQgetvalue(r, row, col), &len);
    if (!v)
        return ESIM_ENOMEM;
    esim_err rc = len ? esim_buf_append(out, v, len) : ESIM_OK;
    PQfreemem(v);
    return rc;
}

/* ---- transactions -------------------------------------------------------------- */

static esim_err simple(pg_store *s, const char *sql, esim_error *err)
{
    s->queries++;
    PGresult *res = PQexec(s->conn, sql);
    esim_err rc = PQresultStatus(res) == PGRES_COMMAND_OK ? ESIM_OK : pg_fail(s, err, sql, res);
    PQclear(res);
    return rc;
}

static esim_err pg_op_begin(store *base, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    if (s->depth > 0) {
        esim_err rc = s->tx_failed ? esim_fail(err, ESIM_ESTORE,
                                               "store (pgsql): the transaction "
                                               "failed")
                      : s->whole   ? ESIM_OK
                                   : simple(s, "SAVEPOINT op", err);
        if (rc == ESIM_OK)
            s->depth++;
        return rc;
    }
    esim_err rc = ensure_conn(s, err);
    if (rc == ESIM_OK) {
        rc = simple(s, "BEGIN", err);
        /* Nothing was done yet: a connection found dead here (the server
         * restarted since the last operation; libpq may have read the
         * server's farewell without noticing the close yet, so its status
         * can still say OK) is remade and tried once more. */
        if (rc != ESIM_OK && (rc = reconnect(s, err)) == ESIM_OK)
            rc = simple(s, "BEGIN", err);
    }
    if (rc != ESIM_OK)
        return rc;
    s->depth = 1;
    s->tx_failed = false;
    s->whole = false;
    return ESIM_OK;
}

/* A whole unit (esim_store_unit_begin_whole): its operations take no
 * savepoint; the first that fails fails the transaction. */
static esim_err pg_op_begin_whole(store *base, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    bool outer = s->depth == 0;
    esim_err rc = pg_op_begin(base, err);
    if (rc == ESIM_OK && outer)
        s->whole = true;
    return rc;
}

static esim_err pg_op_end(store *base, esim_err rc, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    if (s->depth <= 0)
        return rc;
    s->depth--;
    if (s->depth == 0)
        s->whole = false;
    if (s->depth > 0 && s->whole) {
        if (rc != ESIM_OK)
            s->tx_failed = true; /* nothing to undo it alone with: the unit fails */
        return rc;
    }
    if (s->depth > 0) {
        if (rc == ESIM_OK && !s->tx_failed) {
            if (simple(s, "RELEASE SAVEPOINT op", err) == ESIM_OK)
                return ESIM_OK;
            rc = ESIM_ESTORE;
        }
        /* Undo this operation only: the enclosing one may go on. */
        if (simple(s, "ROLLBACK TO SAVEPOINT op", NULL) == ESIM_OK &&
            simple(s, "RELEASE SAVEPOINT op", NULL) == ESIM_OK)
            s->tx_failed = false;
        return rc;
    }
    if (rc == ESIM_OK && !s->tx_failed) {
        s->queries++;
        PGresult *res = PQexec(s->conn, "COMMIT");
        /* A COMMIT of a failed transaction answers ROLLBACK, not an error. */
        bool ok =
            PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;
        if (!ok)
            pg_fail(s, err, "commit", res);
        PQclear(res);
        s->tx_failed = false;
        if (ok) {
            s->tx_commits++;
            return ESIM_OK;
        }
        s->tx_rollbacks++;
        return ESIM_ESTORE;
    }
    if (rc == ESIM_OK)
        rc = esim_fail(err, ESIM_ESTORE, "store (pgsql): a step failed; the operation is undone");
    if (PQtransactionStatus(s->conn) != PQTRANS_IDLE)
        simple(s, "ROLLBACK", NULL);
    s->tx_rollbacks++;
    s->tx_failed = false;
    return rc;
}

/* ---- device steps ---------------------------------------------------------------- */

static esim_err pg_event_add(store *base, int64_t now, const char *kind, const char *udid,
                             const char *uuid, const char *detail, const void *raw, size_t raw_len,
                             esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_EVENT, "ittttb", now, kind, udid, uuid, detail, raw,
                     raw_len);
}

/* A query expected to return at most one row: ESIM_OK with *res set (one
 * row), ESIM_ENOTFOUND (none, nothing to clear), or ESIM_ESTORE. */
static esim_err one_row(PGresult *res, PGresult **out)
{
    if (!res)
        return ESIM_ESTORE;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return ESIM_ENOTFOUND;
    }
    *out = res;
    return ESIM_OK;
}

static esim_err pg_device_identity(store *base, const char *udid, store_identity *out,
                                   esim_error *err)
{
    pg_store *s = (pg_store *)base;
    PGresult *r = NULL;
    esim_err rc = one_row(run(s, err, S_DEV_IDENTITY, "t", udid), &r);
    if (rc != ESIM_OK)
        return rc;
    out->enrolled = col_int(r, 0, 0) != 0;
    col_text(r, 0, 1, out->cert_sha256, sizeof out->cert_sha256);
    out->enrolled_at = col_i64(r, 0, 2);
    col_text(r, 0, 3, out->serial_number, sizeof out->serial_number);
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_device_by_cert(store *base, const char *cert, const char *udid, char other[65],
                                  esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_DEV_BY_CERT, "tt", cert, udid), &r);
    if (rc != ESIM_OK)
        return rc;
    col_text(r, 0, 0, other, 65);
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_device_enroll(store *base, const store_authenticate_in *in, bool keep_token,
                                 int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_DEV_AUTH_UPSERT, "tiTTTTTTTTTiit", in->udid,
                     (int64_t)in->is_enrollment_id, in->topic, in->serial_number, in->os_version,
                     in->build_version, in->product_name, in->model, in->device_name, in->imei,
                     in->cert_sha256, now, (int64_t)keep_token,
                     in->platform && *in->platform ? in->platform : "apple");
}

static esim_err pg_device_restart_enrolment(store *base, const char *udid, int64_t at,
                                            esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_DEV_REENROLLED, "ti", udid, at);
}

static esim_err pg_device_set_token(store *base, const char *udid, const char *topic,
                                    const char *token_hex, const char *push_magic, int64_t now,
                                    int64_t *tally, esim_error *err)
{
    PGresult *r =
        run((pg_store *)base, err, S_DEV_TOKEN, "tTTTi", udid, topic, token_hex, push_magic, now);
    if (!r)
        return ESIM_ESTORE;
    if (tally)
        *tally = PQntuples(r) > 0 ? col_i64(r, 0, 0) : 0;
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_device_bind_cert(store *base, const char *udid, const char *cert_sha256,
                                    esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_DEV_BIND_CERT, "tt", udid, cert_sha256);
}

static esim_err pg_device_bootstrap_set(store *base, const char *udid, const void *token,
                                        size_t len, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_DEV_BOOTSTRAP_SET, "tb", udid, token, len);
}

static esim_err pg_device_bootstrap_get(store *base, const char *udid, esim_buf *out,
                                        esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_DEV_BOOTSTRAP_GET, "t", udid), &r);
    if (rc != ESIM_OK)
        return rc;
    if (PQgetisnull(r, 0, 0))
        rc = ESIM_ENOTFOUND;
    else if (col_bytes(r, 0, 0, out) != ESIM_OK)
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    PQclear(r);
    return rc;
}

static esim_err pg_device_unenroll(store *base, const char *udid, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_DEV_CHECKOUT, "ti", udid, now);
}

static esim_err pg_device_seen(store *base, const char *udid, const char *eid, int64_t now,
                               esim_error *err)
{
    if (eid)
        return exec_stmt((pg_store *)base, err, S_DEV_SEEN_EID, "tit", udid, now, eid);
    return exec_stmt((pg_store *)base, err, S_DEV_SEEN, "ti", udid, now);
}

static esim_err pg_device_seen_verified(store *base, const char *udid, const char *cert,
                                        const char *eid, int64_t now, esim_error *err)
{
    PGresult *res = run((pg_store *)base, err, S_DEV_SEEN_VERIFIED, "tiTt", udid, now, cert, eid);
    if (!res)
        return ESIM_ESTORE;
    bool seen = strcmp(PQcmdTuples(res), "0") != 0;
    PQclear(res);
    return seen ? ESIM_OK : ESIM_ENOTFOUND;
}

static esim_err pg_device_owe_push(store *base, const char *udid, int64_t at, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_DEV_PUSH_DUE_AT, "ti", udid, at);
}

static esim_err pg_device_set_push_state(store *base, const char *udid, store_push_state ps,
                                         esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_DEV_PUSH_STATE, "tt", udid,
                     esim_store_push_state_name(ps));
}

static esim_err pg_device_push_paid(store *base, const char *udid, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_DEV_DUE_CLEAR, "t", udid);
}

static esim_err pg_devices_take_push_due(store *base, int64_t now, char (*udids)[65], size_t max,
                                         size_t *n, esim_error *err)
{
    *n = 0;
    PGresult *r = run((pg_store *)base, err, S_DEV_TAKE_DUE, "ii", now, (int64_t)max);
    if (!r)
        return ESIM_ESTORE;
    for (int i = 0; i < PQntuples(r) && *n < max; i++)
        col_text(r, i, 0, udids[(*n)++], 65);
    PQclear(r);
    return ESIM_OK;
}

/* ---- queue steps ------------------------------------------------------------------- */

static esim_err pg_command_insert(store *base, const store_command_in *cmd, int64_t now,
                                  esim_error *err)
{
    pg_store *s = (pg_store *)base;
    esim_err rc = exec_stmt(s, err, S_CMD_INSERT, "ttbiii", cmd->uuid, cmd->request_type, cmd->body,
                            cmd->body_len, (int64_t)cmd->priority, now, cmd->expires_at);
    return rc != ESIM_OK && s->unique_violation ? ESIM_EEXIST : rc;
}

static esim_err pg_entry_insert(store *base, const char *udid, const store_command_in *cmd,
                                int64_t now, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    esim_err rc = exec_stmt(s, err, S_Q_INSERT, "ttiii", udid, cmd->uuid, (int64_t)cmd->priority,
                            cmd->expires_at, now);
    return rc != ESIM_OK && s->unique_violation ? ESIM_EEXIST : rc;
}

static esim_err pg_entry_enqueue(store *base, const char *udid, const store_command_in *cmd,
                                 int64_t now, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    PGresult *res = run(s, err, S_Q_ENQUEUE_LOGGED, "ttiiit", udid, cmd->uuid,
                        (int64_t)cmd->priority, cmd->expires_at, now, cmd->request_type);
    if (!res)
        return s->unique_violation ? ESIM_EEXIST : ESIM_ESTORE;
    bool queued = strcmp(PQcmdTuples(res), "0") != 0;
    PQclear(res);
    return queued ? ESIM_OK : ESIM_ENOTFOUND;
}

static esim_err pg_entry_find(store *base, const char *udid, const char *uuid, int64_t *entry,
                              store_qstate *state, esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_Q_FIND, "tt", udid, uuid), &r);
    if (rc != ESIM_OK)
        return rc;
    *entry = col_i64(r, 0, 0);
    if (esim_store_qstate_from_name(PQgetvalue(r, 0, 1), state) != ESIM_OK)
        *state = STORE_Q_QUEUED;
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_entry_answer(store *base, int64_t entry, store_qstate state, int not_now_add,
                                const char *error_chain_json, const void *raw, size_t raw_len,
                                int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_Q_ANSWER, "itiiitb", entry,
                     esim_store_qstate_name(state), (int64_t)esim_store_qstate_active(state), now,
                     (int64_t)not_now_add, error_chain_json, raw, raw_len);
}

static esim_err pg_entry_answer_sent(store *base, const char *udid, const char *uuid,
                                     store_qstate state, int not_now_add,
                                     const char *error_chain_json, const void *raw, size_t raw_len,
                                     int64_t now, esim_error *err)
{
    PGresult *res = run((pg_store *)base, err, S_Q_ANSWER_SENT, "tttiiitb", udid, uuid,
                        esim_store_qstate_name(state), (int64_t)esim_store_qstate_active(state),
                        now, (int64_t)not_now_add, error_chain_json, raw, raw_len);
    if (!res)
        return ESIM_ESTORE;
    bool answered = strcmp(PQcmdTuples(res), "0") != 0;
    PQclear(res);
    return answered ? ESIM_OK : ESIM_ENOTFOUND;
}

static esim_err pg_entry_answer_sent_logged(store *base, const char *udid, const char *uuid,
                                            store_qstate state, int not_now_add,
                                            const char *error_chain_json, const void *raw,
                                            size_t raw_len, const char *status, int64_t now,
                                            esim_error *err)
{
    PGresult *res = run((pg_store *)base, err, S_Q_ANSWER_SENT_LOGGED, "tttiiitbt", udid, uuid,
                        esim_store_qstate_name(state), (int64_t)esim_store_qstate_active(state),
                        now, (int64_t)not_now_add, error_chain_json, raw, raw_len, status);
    if (!res)
        return ESIM_ESTORE;
    bool answered = strcmp(PQcmdTuples(res), "0") != 0;
    PQclear(res);
    return answered ? ESIM_OK : ESIM_ENOTFOUND;
}

static bool skipped(const char *const *skip, size_t n_skip, const char *uuid)
{
    for (size_t i = 0; i < n_skip; i++)
        if (skip[i] && strcmp(skip[i], uuid) == 0)
            return true;
    return false;
}

static esim_err pg_entry_next(store *base, const char *udid, int64_t now, const char *const *skip,
                              size_t n_skip, int64_t *entry, store_next_command *next,
                              esim_error *err)
{
    /* The skipped ones can only be among the first n_skip + 1. In binary
     * form: the body's bytes as they are, not hex to decode (≈ 11,000
     * instructions a command); text columns are the same bytes either way
     * (and, as in text form, end in a zero byte). */
    PGresult *r =
        run_binary((pg_store *)base, err, S_Q_NEXT, "tii", udid, now, (int64_t)n_skip + 1);
    if (!r)
        return ESIM_ESTORE;
    esim_err rc = ESIM_OK;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *uuid = PQgetvalue(r, i, 1);
        if (skipped(skip, n_skip, uuid))
            continue;
        if (!col_i64_bin(r, i, 0, entry)) {
            rc = esim_fail(err, ESIM_ESTORE, "the queue's id is not a bigint");
            break;
        }
        col_text(r, i, 1, next->command_uuid, sizeof next->command_uuid);
        col_text(r, i, 2, next->request_type, sizeof next->request_type);
        if (col_bytes_bin(r, i, 3, &next->body) != ESIM_OK)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        else
            next->present = true;
        break;
    }
    PQclear(r);
    return rc;
}

static esim_err pg_entry_mark_sent(store *base, int64_t entry, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_Q_MARK_SENT, "ii", entry, now);
}

static esim_err pg_entry_mark_sent_logged(store *base, int64_t entry, const char *request_type,
                                          int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_Q_MARK_SENT_LOGGED, "iit", entry, now, request_type);
}

static esim_err pg_entry_cancel(store *base, int64_t entry, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_Q_CANCEL_ONE, "ii", entry, now);
}

static esim_err pg_entry_retire(store *base, int64_t entry, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_Q_RETIRE, "ii", entry, now);
}

static esim_err pg_entry_last_sent(store *base, const char *udid, const char *request_type,
                                   int64_t since, int64_t *entry, int64_t *sent_at, esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc =
        one_row(run((pg_store *)base, err, S_Q_LAST_SENT, "tit", udid, since, request_type), &r);
    if (rc != ESIM_OK)
        return rc;
    *entry = col_i64(r, 0, 0);
    if (sent_at)
        *sent_at = col_i64(r, 0, 1);
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_entries_cancel_device(store *base, const char *udid, const char *kind,
                                         const char *detail, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_Q_CANCEL_ALL, "titt", udid, now, detail, kind);
}

static esim_err pg_entries_pushed(store *base, const char *udid, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_Q_PUSHED, "ti", udid, now);
}

static esim_err pg_entries_expire(store *base, const char *kind, int64_t now, size_t *n,
                                  esim_error *err)
{
    *n = 0;
    PGresult *r = run((pg_store *)base, err, S_Q_EXPIRE, "it", now, kind);
    if (!r)
        return ESIM_ESTORE;
    *n = (size_t)strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return ESIM_OK;
}

/* ---- reads ------------------------------------------------------------------- */

static void read_device(const PGresult *r, int i, store_device *d)
{
    memset(d, 0, sizeof *d);
    col_text(r, i, 0, d->udid, sizeof d->udid);
    d->is_enrollment_id = col_int(r, i, 1) != 0;
    d->enrolled = col_int(r, i, 2) != 0;
    col_text(r, i, 3, d->topic, sizeof d->topic);
    col_text(r, i, 4, d->serial_number, sizeof d->serial_number);
    col_text(r, i, 5, d->os_version, sizeof d->os_version);
    col_text(r, i, 6, d->build_version, sizeof d->build_version);
    col_text(r, i, 7, d->product_name, sizeof d->product_name);
    col_text(r, i, 8, d->model, sizeof d->model);
    col_text(r, i, 9, d->device_name, sizeof d->device_name);
    col_text(r, i, 10, d->imei, sizeof d->imei);
    col_text(r, i, 11, d->eid, sizeof d->eid);
    col_text(r, i, 12, d->cert_sha256, sizeof d->cert_sha256);
    col_text(r, i, 13, d->push_token, sizeof d->push_token);
    col_text(r, i, 14, d->push_magic, sizeof d->push_magic);
    const char *ps = PQgetvalue(r, i, 15);
    d->push_state = strcmp(ps, "valid") == 0  ? STORE_PUSH_VALID
                    : strcmp(ps, "dead") == 0 ? STORE_PUSH_DEAD
                                              : STORE_PUSH_NONE;
    d->enrolled_at = col_i64(r, i, 16);
    d->checked_out_at = col_i64(r, i, 17);
    d->token_updated_at = col_i64(r, i, 18);
    d->last_seen_at = col_i64(r, i, 19);
    d->push_due_at = col_i64(r, i, 20);
    d->token_update_tally = col_int(r, i, 21);
    col_text(r, i, 22, d->platform, sizeof d->platform);
    if (!d->platform[0])
        snprintf(d->platform, sizeof d->platform, "apple");
}

static esim_err pg_device_get(store *base, const char *udid, store_device *out, esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_DEV_GET, "t", udid), &r);
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, ESIM_ENOTFOUND, "no device %s", udid ? udid : "(null)");
    if (rc != ESIM_OK)
        return rc;
    read_device(r, 0, out);
    PQclear(r);
    return ESIM_OK;
}

/* What a campaign's creation reads of each device of its target, without
 * the rest of its row. */
static esim_err pg_device_brief(store *base, const char *udid, store_device_brief *out,
                                esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_DEV_BRIEF, "t", udid), &r);
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, ESIM_ENOTFOUND, "no device %s", udid);
    if (rc != ESIM_OK)
        return rc;
    out->enrolled = col_int(r, 0, 0) != 0;
    col_text(r, 0, 1, out->serial_number, sizeof out->serial_number);
    col_text(r, 0, 2, out->os_version, sizeof out->os_version);
    col_text(r, 0, 3, out->eid, sizeof out->eid);
    col_text(r, 0, 4, out->platform, sizeof out->platform);
    if (!out->platform[0])
        snprintf(out->platform, sizeof out->platform, "apple");
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_device_list(store *base, const char *after, size_t limit, store_device **out,
                               size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return ESIM_OK;
    PGresult *r = run((pg_store *)base, err, S_DEV_LIST, "Ti", after, (int64_t)limit);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    store_device *list = calloc(rows ? rows : 1, sizeof *list);
    if (!list) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < rows; i++)
        read_device(r, (int)i, &list[i]);
    PQclear(r);
    *out = list;
    *n = rows;
    return ESIM_OK;
}

static esim_err pg_device_search(store *base, const char *q, const char *after, size_t limit,
                                 store_device **out, size_t *n, esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_DEV_SEARCH, "TiT", after, (int64_t)limit, q);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    store_device *list = calloc(rows ? rows : 1, sizeof *list);
    if (!list) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < rows; i++)
        read_device(r, (int)i, &list[i]);
    PQclear(r);
    *out = list;
    *n = rows;
    return ESIM_OK;
}

static esim_err pg_fleet_counts(store *base, store_fleet_row **rows, size_t *n, esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_FLEET, "");
    if (!r)
        return ESIM_ESTORE;
    size_t count = (size_t)PQntuples(r);
    store_fleet_row *list = calloc(count ? count : 1, sizeof *list);
    if (!list) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < count; i++) {
        store_fleet_row *row = &list[i];
        col_text(r, (int)i, 0, row->product_name, sizeof row->product_name);
        col_text(r, (int)i, 1, row->model, sizeof row->model);
        row->enrolled = col_int(r, (int)i, 2) != 0;
        const char *ps = PQgetvalue(r, (int)i, 3);
        row->push_state = strcmp(ps, "valid") == 0  ? STORE_PUSH_VALID
                          : strcmp(ps, "dead") == 0 ? STORE_PUSH_DEAD
                                                    : STORE_PUSH_NONE;
        row->verified = col_int(r, (int)i, 4) != 0;
        row->count = (uint64_t)col_i64(r, (int)i, 5);
        col_text(r, (int)i, 6, row->platform, sizeof row->platform);
    }
    PQclear(r);
    *rows = list;
    *n = count;
    return ESIM_OK;
}

static esim_err read_entry(const PGresult *r, int i, store_queue_entry *e)
{
    memset(e, 0, sizeof *e);
    col_text(r, i, 0, e->udid, sizeof e->udid);
    col_text(r, i, 1, e->command_uuid, sizeof e->command_uuid);
    col_text(r, i, 2, e->request_type, sizeof e->request_type);
    if (esim_store_qstate_from_name(PQgetvalue(r, i, 3), &e->state) != ESIM_OK)
        e->state = STORE_Q_QUEUED;
    e->priority = col_int(r, i, 4);
    e->attempts = col_int(r, i, 5);
    e->not_now_count = col_int(r, i, 6);
    e->enqueued_at = col_i64(r, i, 7);
    e->pushed_at = col_i64(r, i, 8);
    e->sent_at = col_i64(r, i, 9);
    e->answered_at = col_i64(r, i, 10);
    e->updated_at = col_i64(r, i, 11);
    e->expires_at = col_i64(r, i, 12);
    if (!PQgetisnull(r, i, 13) && !(e->error_chain_json = strdup(PQgetvalue(r, i, 13))))
        return ESIM_ENOMEM;
    return col_bytes(r, i, 14, &e->result);
}

/* Appends every row of |r| (cleared here) to a growing array. */
static esim_err collect_entries(PGresult *r, store_queue_entry **arr, size_t *n, esim_error *err)
{
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    esim_err rc = ESIM_OK;
    if (rows) {
        store_queue_entry *grown = realloc(*arr, (*n + rows) * sizeof *grown);
        if (!grown)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
        else
            *arr = grown;
    }
    for (size_t i = 0; rc == ESIM_OK && i < rows; i++) {
        esim_err er = read_entry(r, (int)i, &(*arr)[*n]);
        (*n)++;
        if (er != ESIM_OK)
            rc = esim_fail(err, er, "out of memory");
    }
    PQclear(r);
    return rc;
}

static esim_err pg_command_get(store *base, const char *uuid, const char *after, size_t limit,
                               store_command_info *info, store_queue_entry **entries, size_t *n,
                               esim_error *err)
{
    pg_store *s = (pg_store *)base;
    *entries = NULL;
    *n = 0;
    PGresult *r = NULL;
    esim_err rc = one_row(run(s, err, S_CMD_GET, "t", uuid), &r);
    if (rc == ESIM_ENOTFOUND)
        return esim_fail(err, ESIM_ENOTFOUND, "no command %s", uuid ? uuid : "(null)");
    if (rc != ESIM_OK)
        return rc;
    memset(info, 0, sizeof *info);
    col_text(r, 0, 0, info->uuid, sizeof info->uuid);
    col_text(r, 0, 1, info->request_type, sizeof info->request_type);
    info->priority = col_int(r, 0, 2);
    info->created_at = col_i64(r, 0, 3);
    info->expires_at = col_i64(r, 0, 4);
    PQclear(r);
    if (!(r = run(s, err, S_Q_COUNT_BY_COMMAND, "t", uuid)))
        return ESIM_ESTORE;
    for (int i = 0; i < PQntuples(r); i++) {
        store_qstate qs;
        uint64_t count = (uint64_t)col_i64(r, i, 1);
        if (esim_store_qstate_from_name(PQgetvalue(r, i, 0), &qs) == ESIM_OK)
            info->by_state[qs] = count;
        info->devices += count;
    }
    PQclear(r);
    if (limit == 0)
        return ESIM_OK;
    rc = collect_entries(run(s, err, S_Q_BY_COMMAND, "tTi", uuid, after, (int64_t)limit), entries,
                         n, err);
    if (rc != ESIM_OK) {
        esim_store_queue_entries_free(*entries, *n);
        *entries = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err pg_device_entries(store *base, const char *udid, bool with_done,
                                  store_queue_entry **entries, size_t *n, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    esim_err rc = collect_entries(run(s, err, S_Q_ACTIVE_FOR_DEVICE, "t", udid), entries, n, err);
    if (rc == ESIM_OK && with_done)
        rc = collect_entries(run(s, err, S_Q_DONE_FOR_DEVICE, "t", udid), entries, n, err);
    return rc;
}

static esim_err pg_stats(store *base, store_stats *out, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    PGresult *r = run(s, err, S_STATS_DEVICES, "");
    if (!r)
        return ESIM_ESTORE;
    out->devices = (uint64_t)col_i64(r, 0, 0);
    out->enrolled = (uint64_t)col_i64(r, 0, 1);
    out->reachable = (uint64_t)col_i64(r, 0, 2);
    PQclear(r);
    if (!(r = run(s, err, S_STATS_QUEUE, "")))
        return ESIM_ESTORE;
    for (int i = 0; i < PQntuples(r); i++) {
        store_qstate qs;
        if (esim_store_qstate_from_name(PQgetvalue(r, i, 0), &qs) == ESIM_OK)
            out->queue_by_state[qs] = (uint64_t)col_i64(r, i, 1);
    }
    PQclear(r);
    if (!(r = run(s, err, S_STATS_EVENTS, "")))
        return ESIM_ESTORE;
    out->events = (uint64_t)col_i64(r, 0, 0);
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_events_list(store *base, const char *udid, int64_t after, size_t limit,
                               store_event **out, size_t *n, esim_error *err)
{
    *out = NULL;
    *n = 0;
    if (limit == 0)
        return ESIM_OK;
    PGresult *r = run((pg_store *)base, err, S_EVENTS_LIST, "tii", udid, after, (int64_t)limit);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    store_event *list = calloc(rows ? rows : 1, sizeof *list);
    if (!list) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    esim_err rc = ESIM_OK;
    size_t count = 0;
    for (; count < rows && rc == ESIM_OK; count++) {
        store_event *e = &list[count];
        int i = (int)count;
        e->id = col_i64(r, i, 0);
        e->at = col_i64(r, i, 1);
        col_text(r, i, 2, e->kind, sizeof e->kind);
        col_text(r, i, 3, e->udid, sizeof e->udid);
        col_text(r, i, 4, e->command_uuid, sizeof e->command_uuid);
        col_text(r, i, 5, e->detail, sizeof e->detail);
        if (col_bytes(r, i, 6, &e->raw) != ESIM_OK)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    PQclear(r);
    if (rc != ESIM_OK) {
        esim_store_events_free(list, count);
        return rc;
    }
    *out = list;
    *n = count;
    return ESIM_OK;
}

static esim_err pg_outbox_add(store *base, int64_t url_key, const void *body, size_t len,
                              int64_t now, const char *owner, int64_t claim_ms, int64_t *id,
                              esim_error *err)
{
    if (!owner)
        claim_ms = 0;
    PGresult *r = run((pg_store *)base, err, S_OUTBOX_ADD, "iibti", url_key, now, body, len,
                      owner ? owner : "", claim_ms);
    if (!r)
        return ESIM_ESTORE;
    if (id)
        *id = PQntuples(r) > 0 ? col_i64(r, 0, 0) : 0;
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_outbox_delete(store *base, int64_t id, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_OUTBOX_DEL, "i", id);
}

/* One statement for up to 1,000 rows at a time (an array literal). */
static esim_err pg_outbox_delete_ids(store *base, const int64_t *ids, size_t n, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    esim_err rc = ESIM_OK;
    for (size_t from = 0; rc == ESIM_OK && from < n; from += 1000) {
        size_t upto = n - from < 1000 ? n : from + 1000;
        esim_buf b = {0};
        esim_buf_append_str(&b, "{");
        for (size_t i = from; i < upto; i++) {
            char one[24];
            snprintf(one, sizeof one, "%s%lld", i > from ? "," : "", (long long)ids[i]);
            esim_buf_append_str(&b, one);
        }
        if (esim_buf_append(&b, "}", 2) != ESIM_OK) {
            esim_buf_free(&b);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
        rc = exec_stmt(s, err, S_OUTBOX_DEL_IDS, "t", (const char *)b.data);
        esim_buf_free(&b);
    }
    return rc;
}

static int cmp_outbox_id(const void *x, const void *y)
{
    int64_t a = ((const store_outbox_row *)x)->id, b = ((const store_outbox_row *)y)->id;
    return a < b ? -1 : a > b;
}

/* The rows (id, url_key, created_at, body) of |r| in id order; clears |r|. */
static esim_err outbox_rows(PGresult *r, store_outbox_row **out, size_t *n, esim_error *err)
{
    size_t rows = (size_t)PQntuples(r);
    store_outbox_row *list = calloc(rows ? rows : 1, sizeof *list);
    if (!list) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < rows; k++) {
        store_outbox_row *o = &list[k];
        int i = (int)k;
        o->id = col_i64(r, i, 0);
        o->url_key = col_i64(r, i, 1);
        o->created_at = col_i64(r, i, 2);
        if (col_bytes(r, i, 3, &o->body) != ESIM_OK) {
            PQclear(r);
            esim_store_outbox_free(list, k + 1);
            return esim_fail(err, ESIM_ENOMEM, "out of memory");
        }
    }
    PQclear(r);
    qsort(list, rows, sizeof *list, cmp_outbox_id);
    *out = list;
    *n = rows;
    return ESIM_OK;
}

/* ---- IoT devices and packages ------------------------------------------------------- */

static void pg_iot_row(const PGresult *r, int i, store_iot_device *d)
{
    col_text(r, i, 0, d->eid, sizeof d->eid);
    col_text(r, i, 1, d->state, sizeof d->state);
    d->association_token = col_i64(r, i, 2);
    d->counter = col_i64(r, i, 3);
    d->last_poll_ms = col_i64(r, i, 4);
    d->registered_ms = col_i64(r, i, 5);
    d->updated_ms = col_i64(r, i, 6);
    col_text(r, i, 7, d->last_error, sizeof d->last_error);
}

static esim_err pg_iot_get(store *base, const char *eid, bool for_update, store_iot_device *out,
                           esim_error *err)
{
    pg_store *s = (pg_store *)base;
    int stmt = for_update ? S_IOT_GET_LOCKED : S_IOT_GET;
    PGresult *r = run(s, err, stmt, "t", eid);
    if (r && for_update && PQntuples(r) == 0) {
        /* None yet: lock the EID, then read again (whoever created it
         * meanwhile held that lock and has committed). */
        PQclear(r);
        r = run(s, err, S_IOT_KEY_LOCK, "t", eid);
        if (r) {
            PQclear(r);
            r = run(s, err, stmt, "t", eid);
        }
    }
    if (!r)
        return ESIM_ESTORE;
    esim_err rc = ESIM_OK;
    if (PQntuples(r) == 0) {
        rc = ESIM_ENOTFOUND;
    } else {
        pg_iot_row(r, 0, out);
        if (col_bytes(r, 0, 8, &out->euicc_cert) != ESIM_OK)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    PQclear(r);
    return rc;
}

static esim_err pg_iot_put(store *base, const store_iot_device *d, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_IOT_PUT, "ttiiiiiTb", d->eid, d->state,
                     d->association_token, d->counter, d->last_poll_ms, d->registered_ms,
                     d->updated_ms, d->last_error, d->euicc_cert.len ? d->euicc_cert.data : NULL,
                     d->euicc_cert.len);
}

static esim_err pg_iot_list(store *base, const char *after, size_t limit, store_iot_device **out,
                            size_t *n, esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_IOT_LIST, "ti", after, (int64_t)limit);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    store_iot_device *list = calloc(rows ? rows : 1, sizeof *list);
    if (!list) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < rows; k++)
        pg_iot_row(r, (int)k, &list[k]);
    PQclear(r);
    *out = list;
    *n = rows;
    return ESIM_OK;
}

static esim_err pg_iot_pkg_put(store *base, const store_iot_package *p, int64_t now,
                               esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_IOT_PKG_PUT, "ttttiiiiTtTbbt", p->command_uuid,
                     p->eid, p->kind, p->state, p->counter, p->created_ms ? p->created_ms : now,
                     p->sent_ms, p->answered_ms, p->summary, p->result_words, p->error,
                     p->request.len ? p->request.data : NULL, p->request.len,
                     p->result.len ? p->result.data : NULL, p->result.len, p->smdp);
}

static esim_err pg_iot_trigger_find(store *base, const char *smdp, const char *eid, bool pending,
                                    bool *found, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    PGresult *r = *eid      ? run(s, err, S_IOT_TRIGGER_FIND, "tti", eid, smdp, (int64_t)pending)
                  : pending ? run(s, err, S_IOT_TRIGGER_ANY_SENT, "t", smdp)
                            : run(s, err, S_IOT_TRIGGER_ANY, "t", smdp);
    if (!r)
        return ESIM_ESTORE;
    *found = PQntuples(r) > 0;
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_relay_session_put(store *base, const store_relay_session *rs,
                                     int64_t expired_before, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    esim_err rc = exec_stmt(s, err, S_RELAY_EXPIRE, "i", expired_before);
    return rc != ESIM_OK ? rc
                         : exec_stmt(s, err, S_RELAY_PUT, "ttti", rs->txid, rs->smdp, rs->eid,
                                     rs->created_ms);
}

static esim_err pg_relay_session_get(store *base, const char *txid, store_relay_session *out,
                                     esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_RELAY_GET, "t", txid);
    if (!r)
        return ESIM_ESTORE;
    esim_err rc = ESIM_ENOTFOUND;
    if (PQntuples(r) > 0) {
        col_text(r, 0, 0, out->smdp, sizeof out->smdp);
        col_text(r, 0, 1, out->eid, sizeof out->eid);
        out->created_ms = col_i64(r, 0, 2);
        rc = ESIM_OK;
    }
    PQclear(r);
    return rc;
}

static esim_err pg_relay_session_drop(store *base, const char *txid, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_RELAY_DROP, "t", txid);
}

static esim_err pg_iot_pkg_list(store *base, const char *eid, const char *uuid, size_t limit,
                                store_iot_package **out, size_t *n, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    PGresult *r = !*uuid ? run(s, err, S_IOT_PKG_LIST, "ti", eid, (int64_t)limit)
                  : *eid ? run(s, err, S_IOT_PKG_ONE, "tti", uuid, eid, (int64_t)limit)
                         : run(s, err, S_IOT_PKG_BY_COMMAND, "ti", uuid, (int64_t)limit);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    store_iot_package *list = calloc(rows ? rows : 1, sizeof *list);
    if (!list) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    esim_err rc = ESIM_OK;
    for (size_t k = 0; k < rows && rc == ESIM_OK; k++) {
        store_iot_package *p = &list[k];
        int i = (int)k;
        col_text(r, i, 0, p->command_uuid, sizeof p->command_uuid);
        col_text(r, i, 1, p->eid, sizeof p->eid);
        col_text(r, i, 2, p->kind, sizeof p->kind);
        col_text(r, i, 3, p->state, sizeof p->state);
        p->counter = col_i64(r, i, 4);
        p->created_ms = col_i64(r, i, 5);
        p->sent_ms = col_i64(r, i, 6);
        p->answered_ms = col_i64(r, i, 7);
        col_text(r, i, 8, p->summary, sizeof p->summary);
        if (!PQgetisnull(r, i, 9) && !(p->result_words = strdup(PQgetvalue(r, i, 9))))
            rc = ESIM_ENOMEM;
        col_text(r, i, 10, p->error, sizeof p->error);
        if (rc == ESIM_OK && (col_bytes(r, i, 11, &p->request) != ESIM_OK ||
                              col_bytes(r, i, 12, &p->result) != ESIM_OK))
            rc = ESIM_ENOMEM;
        col_text(r, i, 13, p->smdp, sizeof p->smdp);
    }
    PQclear(r);
    if (rc != ESIM_OK) {
        esim_store_iot_packages_free(list, rows);
        return esim_fail(err, rc, "out of memory");
    }
    *out = list;
    *n = rows;
    return ESIM_OK;
}

static esim_err pg_outbox_list(store *base, int64_t after, size_t limit, store_outbox_row **out,
                               size_t *n, esim_error *err)
{
    if (limit == 0)
        return ESIM_OK;
    PGresult *r = run((pg_store *)base, err, S_OUTBOX_LIST, "ii", after, (int64_t)limit);
    if (!r)
        return ESIM_ESTORE;
    return outbox_rows(r, out, n, err);
}

static esim_err pg_audit_add(store *base, const store_audit *in, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_AUDIT_ADD, "iTTTTiT", in->at, in->who, in->role,
                     in->method, in->target, (int64_t)in->status, in->detail);
}

static esim_err pg_audit_list(store *base, int64_t after, size_t limit, store_audit **out,
                              size_t *n, esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_AUDIT_LIST, "ii", after, (int64_t)limit);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    store_audit *list = calloc(rows ? rows : 1, sizeof *list);
    if (!list) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < rows; k++) {
        store_audit *a = &list[k];
        int i = (int)k;
        a->id = col_i64(r, i, 0);
        a->at = col_i64(r, i, 1);
        col_text(r, i, 2, a->who, sizeof a->who);
        col_text(r, i, 3, a->role, sizeof a->role);
        col_text(r, i, 4, a->method, sizeof a->method);
        col_text(r, i, 5, a->target, sizeof a->target);
        a->status = (int)col_i64(r, i, 6);
        col_text(r, i, 7, a->detail, sizeof a->detail);
    }
    PQclear(r);
    *out = list;
    *n = rows;
    return ESIM_OK;
}

static esim_err pg_event_latest(store *base, const char *udid, const char *const *kinds,
                                size_t n_kinds, store_event *out, esim_error *err)
{
    /* Unused kind slots stay NULL, which matches nothing. */
    const char *k[STORE_EVENT_KINDS_MAX] = {0};
    for (size_t i = 0; i < n_kinds && i < STORE_EVENT_KINDS_MAX; i++)
        k[i] = kinds[i];
    PGresult *r = NULL;
    esim_err rc = one_row(
        run((pg_store *)base, err, S_EVENT_LATEST, "ttttt", udid, k[0], k[1], k[2], k[3]), &r);
    if (rc != ESIM_OK)
        return rc;
    out->id = col_i64(r, 0, 0);
    out->at = col_i64(r, 0, 1);
    col_text(r, 0, 2, out->kind, sizeof out->kind);
    col_text(r, 0, 3, out->udid, sizeof out->udid);
    col_text(r, 0, 4, out->command_uuid, sizeof out->command_uuid);
    col_text(r, 0, 5, out->detail, sizeof out->detail);
    PQclear(r);
    return ESIM_OK;
}

/* ---- campaign records ------------------------------------------------------------- */

static esim_err pg_campaign_put(store *base, const store_campaign *c, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_CAMP_PUT, "tTtiii", c->id, c->name, c->definition,
                     (int64_t)c->state, c->created_ms, now);
}

static esim_err pg_campaign_command_put(store *base, const char *campaign_id,
                                        const store_campaign_command *cmd, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_CAMP_CMD_PUT, "tti", cmd->uuid, campaign_id,
                     (int64_t)cmd->step);
}

static esim_err pg_campaign_device_put(store *base, const char *campaign_id,
                                       const store_campaign_device *d, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_CAMP_DEV_PUT, "titTTiiiiiiiiiiiiTti", campaign_id,
                     (int64_t)d->index, d->udid, d->eid, d->iccid, (int64_t)d->state,
                     (int64_t)d->step, (int64_t)d->retries, (int64_t)d->verify_tries,
                     (int64_t)d->flags, (int64_t)d->pushes, d->not_now, d->changed_ms, d->next_ms,
                     d->deadline_ms, d->last_push_ms, (int64_t)d->push_state, d->command_uuid,
                     d->reason, (int64_t)d->platform);
}

static esim_err pg_campaign_state_get(store *base, const char *id, int *state, int64_t *version,
                                      esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_CAMP_STATE_GET, "t", id);
    if (!r)
        return ESIM_ESTORE;
    esim_err rc = ESIM_ENOTFOUND;
    if (PQntuples(r) > 0) {
        *state = col_int(r, 0, 0);
        *version = col_i64(r, 0, 1);
        rc = ESIM_OK;
    }
    PQclear(r);
    return rc;
}

static esim_err pg_campaign_state_put(store *base, const char *id, int state, int64_t now,
                                      esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_CAMP_STATE_PUT, "tii", id, (int64_t)state, now);
}

static esim_err pg_campaign_totals_put(store *base, const char *id, int64_t pushes,
                                       int64_t commands, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_CAMP_TOTALS_PUT, "tii", id, pushes, commands);
}

static esim_err pg_campaigns_list(store *base, store_campaign **out, size_t *n, esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_CAMP_LIST, "");
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    esim_err rc = ESIM_OK;
    if (rows && !(*out = calloc(rows, sizeof **out)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t i = 0; rc == ESIM_OK && i < rows; i++) {
        store_campaign *c = &(*out)[i];
        (*n)++;
        c->id = strdup(PQgetvalue(r, (int)i, 0));
        c->name = strdup(PQgetvalue(r, (int)i, 1));
        c->definition = strdup(PQgetvalue(r, (int)i, 2));
        c->state = col_int(r, (int)i, 3);
        c->created_ms = col_i64(r, (int)i, 4);
        c->updated_ms = col_i64(r, (int)i, 5);
        c->version = col_i64(r, (int)i, 6);
        c->pushes = col_i64(r, (int)i, 7);
        c->commands = col_i64(r, (int)i, 8);
        if (!c->id || !c->name || !c->definition)
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    PQclear(r);
    if (rc != ESIM_OK) {
        esim_store_campaigns_free(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err pg_campaign_devices(store *base, const char *campaign_id,
                                    store_campaign_device **out, size_t *n, esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_CAMP_DEVS, "t", campaign_id);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    esim_err rc = ESIM_OK;
    if (rows && !(*out = calloc(rows, sizeof **out)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    for (size_t k = 0; rc == ESIM_OK && k < rows; k++) {
        store_campaign_device *d = &(*out)[k];
        int i = (int)k;
        (*n)++;
        d->index = (size_t)col_i64(r, i, 0);
        col_text(r, i, 1, d->udid, sizeof d->udid);
        col_text(r, i, 2, d->eid, sizeof d->eid);
        col_text(r, i, 3, d->iccid, sizeof d->iccid);
        d->state = col_int(r, i, 4);
        d->step = col_int(r, i, 5);
        d->retries = col_int(r, i, 6);
        d->verify_tries = col_int(r, i, 7);
        d->flags = col_int(r, i, 8);
        d->pushes = col_int(r, i, 9);
        d->not_now = col_i64(r, i, 10);
        d->changed_ms = col_i64(r, i, 11);
        d->next_ms = col_i64(r, i, 12);
        d->deadline_ms = col_i64(r, i, 13);
        d->last_push_ms = col_i64(r, i, 14);
        d->push_state = col_int(r, i, 15);
        col_text(r, i, 16, d->command_uuid, sizeof d->command_uuid);
        d->platform = (uint8_t)col_int(r, i, 18);
        if (!PQgetisnull(r, i, 17) && !(d->reason = strdup(PQgetvalue(r, i, 17))))
            rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    PQclear(r);
    if (rc != ESIM_OK) {
        esim_store_campaign_devices_free(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

static esim_err pg_campaign_commands(store *base, const char *campaign_id,
                                     store_campaign_command **out, size_t *n, esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_CAMP_CMDS, "t", campaign_id);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    if (rows && !(*out = calloc(rows, sizeof **out))) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < rows; i++) {
        col_text(r, (int)i, 0, (*out)[i].uuid, sizeof(*out)[i].uuid);
        (*out)[i].step = col_int(r, (int)i, 1);
    }
    *n = rows;
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_manifest_put(store *base, const store_manifest_row *row, int64_t now,
                                esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_MANIFEST_PUT, "tti", row->serial, row->eid, now);
}

static esim_err pg_code_put(store *base, const store_code_row *row, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_CODE_PUT, "ttTTTi", row->eid, row->code,
                     row->smdp_address, row->matching_id, row->iccid, now);
}

static esim_err pg_manifest_eid(store *base, const char *serial, char eid[ESIM_EID_LEN + 1],
                                esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_MANIFEST_GET, "t", serial), &r);
    if (rc != ESIM_OK)
        return rc;
    col_text(r, 0, 0, eid, ESIM_EID_LEN + 1);
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_code_for_eid(store *base, const char *eid, char iccid[21], char matching_id[256],
                                esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_CODE_GET, "t", eid), &r);
    if (rc != ESIM_OK)
        return rc;
    col_text(r, 0, 0, iccid, 21);
    col_text(r, 0, 1, matching_id, 256);
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_group_exists(store *base, const char *name, esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_GROUP_EXISTS, "t", name), &r);
    if (rc == ESIM_OK)
        PQclear(r);
    return rc;
}

static esim_err pg_group_create(store *base, const char *name, int64_t now, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_GROUP_CREATE, "ti", name, now);
}

static esim_err pg_group_drop(store *base, const char *name, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    esim_err rc = exec_stmt(s, err, S_GROUP_DROP_MEMBERS, "t", name);
    return rc == ESIM_OK ? exec_stmt(s, err, S_GROUP_DROP, "t", name) : rc;
}

static esim_err pg_group_member_set(store *base, const char *name, const char *udid, bool member,
                                    esim_error *err)
{
    return exec_stmt((pg_store *)base, err, member ? S_GROUP_ADD : S_GROUP_REMOVE, "tt", name,
                     udid);
}

static esim_err pg_groups_list(store *base, store_group **out, size_t *n, esim_error *err)
{
    PGresult *r = run((pg_store *)base, err, S_GROUPS_LIST, "");
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    if (rows && !(*out = calloc(rows, sizeof **out))) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < rows; i++) {
        col_text(r, (int)i, 0, (*out)[i].name, sizeof(*out)[i].name);
        (*out)[i].members = (uint64_t)col_i64(r, (int)i, 1);
    }
    *n = rows;
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_names_list(store *base, store_names which, const char *key, char (**out)[65],
                              size_t *n, esim_error *err)
{
    int id = which == STORE_NAMES_GROUP_MEMBERS ? S_GROUP_MEMBERS
             : which == STORE_NAMES_TAG_DEVICES ? S_TAG_DEVICES
                                                : S_DEVICE_TAGS;
    PGresult *r = run((pg_store *)base, err, id, "t", key);
    if (!r)
        return ESIM_ESTORE;
    size_t rows = (size_t)PQntuples(r);
    if (rows && !(*out = calloc(rows, sizeof **out))) {
        PQclear(r);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < rows; i++)
        col_text(r, (int)i, 0, (*out)[i], 65);
    *n = rows;
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_tag_set(store *base, const char *udid, const char *tag, bool on, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, on ? S_TAG_ADD : S_TAG_REMOVE, "tt", udid, tag);
}

static esim_err pg_facts_put(store *base, const store_device_facts *f, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_FACTS_PUT, "tiTTTii", f->udid, (int64_t)f->supervised,
                     f->os_version, f->eid, f->iccid, f->verified_ms, f->updated_ms);
}

static esim_err pg_facts_get(store *base, const char *udid, store_device_facts *out,
                             esim_error *err)
{
    PGresult *r = NULL;
    esim_err rc = one_row(run((pg_store *)base, err, S_FACTS_GET, "t", udid), &r);
    if (rc != ESIM_OK)
        return rc;
    out->supervised = col_int(r, 0, 0);
    col_text(r, 0, 1, out->os_version, sizeof out->os_version);
    col_text(r, 0, 2, out->eid, sizeof out->eid);
    col_text(r, 0, 3, out->iccid, sizeof out->iccid);
    out->verified_ms = col_i64(r, 0, 4);
    out->updated_ms = col_i64(r, 0, 5);
    PQclear(r);
    return ESIM_OK;
}

/* ---- several instances ------------------------------------------------------------ */

static esim_err pg_lease(store *base, const char *name, const char *owner, int64_t ttl_ms,
                         bool *held, char holder[64], esim_error *err)
{
    pg_store *s = (pg_store *)base;
    PGresult *r = run(s, err, S_LEASE, "tti", name, owner, ttl_ms);
    if (!r)
        return ESIM_ESTORE;
    *held = PQntuples(r) > 0;
    PQclear(r);
    if (*held) {
        snprintf(holder, 64, "%s", owner);
        return ESIM_OK;
    }
    /* Someone else holds it: who (for the API and the logs). */
    if (!(r = run(s, err, S_LEASE_HOLDER, "t", name)))
        return ESIM_ESTORE;
    if (PQntuples(r) > 0)
        col_text(r, 0, 0, holder, 64);
    PQclear(r);
    return ESIM_OK;
}

static esim_err pg_lease_release(store *base, const char *name, const char *owner, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_LEASE_RELEASE, "tt", name, owner);
}

static esim_err pg_notify(store *base, const char *topic, const char *payload, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    char msg[7100];
    snprintf(msg, sizeof msg, "%s %s", topic, payload);
    return exec_stmt(s, err, S_NOTIFY, "tt", s->channel, msg);
}

static esim_err pg_outbox_claim(store *base, const char *owner, int64_t claim_ms, size_t limit,
                                store_outbox_row **out, size_t *n, esim_error *err)
{
    PGresult *r =
        run((pg_store *)base, err, S_OUTBOX_CLAIM, "tii", owner, claim_ms, (int64_t)limit);
    if (!r)
        return ESIM_ESTORE;
    return outbox_rows(r, out, n, err);
}

static esim_err pg_outbox_renew(store *base, const char *owner, int64_t claim_ms, esim_error *err)
{
    return exec_stmt((pg_store *)base, err, S_OUTBOX_RENEW, "ti", owner, claim_ms);
}

static esim_err pg_listen(store *base, store_listener **out, esim_error *err)
{
    pg_store *s = (pg_store *)base;
    return pgsql_listener_open(base->ops, s->conninfo, s->channel, out, err);
}

/* ---- open, migrate, close -------------------------------------------------------- */

static void pg_close(store *base)
{
    pg_store *s = (pg_store *)base;
    if (!s)
        return;
    if (s->conn)
        PQfinish(s->conn);
    free(s->conninfo);
    free(s);
}

static void pg_backend_stats(store *base, store_backend_stats *out)
{
    pg_store *s = (pg_store *)base;
    out->connections = PQstatus(s->conn) == CONNECTION_OK ? 1 : 0;
    out->queries = s->queries;
    out->failures = s->failures;
    out->reconnects = s->reconnects;
    out->commits = s->tx_commits;
    out->rollbacks = s->tx_rollbacks;
    out->statement_timeouts = s->timeouts;
}

static const struct store_ops pgsql_ops = {
    .name = "pgsql",
    .features = ESIM_STORE_FEATURE_SHARED,
    .close = pg_close,
    .op_begin = pg_op_begin,
    .op_end = pg_op_end,
    .op_begin_whole = pg_op_begin_whole,
    .device_identity = pg_device_identity,
    .device_by_cert = pg_device_by_cert,
    .device_enroll = pg_device_enroll,
    .device_restart_enrolment = pg_device_restart_enrolment,
    .device_set_token = pg_device_set_token,
    .device_unenroll = pg_device_unenroll,
    .device_seen = pg_device_seen,
    .device_seen_verified = pg_device_seen_verified,
    .device_owe_push = pg_device_owe_push,
    .device_set_push_state = pg_device_set_push_state,
    .device_push_paid = pg_device_push_paid,
    .devices_take_push_due = pg_devices_take_push_due,
    .device_get = pg_device_get,
    .device_brief = pg_device_brief,
    .device_list = pg_device_list,
    .command_insert = pg_command_insert,
    .entry_insert = pg_entry_insert,
    .entry_find = pg_entry_find,
    .entry_answer = pg_entry_answer,
    .entry_answer_sent = pg_entry_answer_sent,
    .entry_next = pg_entry_next,
    .entry_mark_sent = pg_entry_mark_sent,
    .entry_enqueue = pg_entry_enqueue,
    .entry_answer_sent_logged = pg_entry_answer_sent_logged,
    .entry_mark_sent_logged = pg_entry_mark_sent_logged,
    .entry_cancel = pg_entry_cancel,
    .entry_retire = pg_entry_retire,
    .entry_last_sent = pg_entry_last_sent,
    .entries_cancel_device = pg_entries_cancel_device,
    .entries_pushed = pg_entries_pushed,
    .entries_expire = pg_entries_expire,
    .command_get = pg_command_get,
    .device_entries = pg_device_entries,
    .event_add = pg_event_add,
    .events_list = pg_events_list,
    .event_latest = pg_event_latest,
    .outbox_add = pg_outbox_add,
    .outbox_delete = pg_outbox_delete,
    .outbox_delete_ids = pg_outbox_delete_ids,
    .outbox_list = pg_outbox_list,
    .iot_get = pg_iot_get,
    .iot_put = pg_iot_put,
    .iot_list = pg_iot_list,
    .iot_pkg_put = pg_iot_pkg_put,
    .iot_pkg_list = pg_iot_pkg_list,
    .iot_trigger_find = pg_iot_trigger_find,
    .relay_session_put = pg_relay_session_put,
    .relay_session_get = pg_relay_session_get,
    .relay_session_drop = pg_relay_session_drop,
    .audit_add = pg_audit_add,
    .audit_list = pg_audit_list,
    .stats = pg_stats,
    .device_search = pg_device_search,
    .fleet_counts = pg_fleet_counts,
    .campaign_put = pg_campaign_put,
    .campaign_command_put = pg_campaign_command_put,
    .campaign_device_put = pg_campaign_device_put,
    .campaign_state_get = pg_campaign_state_get,
    .campaign_state_put = pg_campaign_state_put,
    .campaign_totals_put = pg_campaign_totals_put,
    .campaigns_list = pg_campaigns_list,
    .campaign_devices = pg_campaign_devices,
    .campaign_commands = pg_campaign_commands,
    .manifest_put = pg_manifest_put,
    .code_put = pg_code_put,
    .manifest_eid = pg_manifest_eid,
    .code_for_eid = pg_code_for_eid,
    .group_exists = pg_group_exists,
    .group_create = pg_group_create,
    .group_drop = pg_group_drop,
    .group_member_set = pg_group_member_set,
    .groups_list = pg_groups_list,
    .names_list = pg_names_list,
    .tag_set = pg_tag_set,
    .facts_put = pg_facts_put,
    .facts_get = pg_facts_get,
    .backend_stats = pg_backend_stats,
    .device_bind_cert = pg_device_bind_cert,
    .device_bootstrap_set = pg_device_bootstrap_set,
    .device_bootstrap_get = pg_device_bootstrap_get,
    .lease = pg_lease,
    .lease_release = pg_lease_release,
    .notify = pg_notify,
    .listen = pg_listen,
    .listener_fd = pgsql_listener_fd,
    .listener_read = pgsql_listener_read,
    .listener_free = pgsql_listener_free,
    .outbox_claim = pg_outbox_claim,
    .outbox_renew = pg_outbox_renew,
};

PGconn *store_pgsql_conn(store *st)
{
    return ((pg_store *)st)->conn;
}

int store_pgsql_schema_version(void)
{
    return migrations[sizeof migrations / sizeof migrations[0] - 1].version;
}

/* One value of a one-row query of the session ("" when NULL). */
static esim_err query_value(pg_store *s, const char *sql, char *out, size_t out_len,
                            esim_error *err)
{
    s->queries++;
    PGresult *r = PQexec(s->conn, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
        esim_err rc = pg_fail(s, err, sql, r);
        PQclear(r);
        return rc;
    }
    col_text(r, 0, 0, out, out_len);
    PQclear(r);
    return ESIM_OK;
}

/* The first schema of search_path exists (made when missing), so a spec
 * with options=-csearch_path=NAME names a store of its own. */
static esim_err ensure_schema(pg_store *s, esim_error *err)
{
    char cur[256], path[512];
    esim_err rc = query_value(s, "SELECT current_schema()", cur, sizeof cur, err);
    if (rc != ESIM_OK || cur[0])
        return rc;
    if ((rc = query_value(s, "SELECT current_setting('search_path')", path, sizeof path, err)) !=
        ESIM_OK)
        return rc;
    char *first = path + strspn(path, " ");
    first[strcspn(first, ",")] = '\0';
    size_t n = strlen(first);
    while (n && first[n - 1] == ' ')
        first[--n] = '\0';
    if (n >= 2 && first[0] == '"' && first[n - 1] == '"') {
        first[n - 1] = '\0';
        first++;
    }
    if (!*first || strcmp(first, "$user") == 0)
        return esim_fail(err, ESIM_ESTORE,
                         "store (pgsql): no schema to keep the store in: search_path names none "
                         "that exists");
    char *ident = PQescapeIdentifier(s->conn, first, strlen(first));
    if (!ident)
        return pg_fail(s, err, "schema name", NULL);
    char sql[600];
    snprintf(sql, sizeof sql, "CREATE SCHEMA IF NOT EXISTS %s", ident);
    PQfreemem(ident);
    return simple(s, sql, err);
}

/* Applies every migration newer than the database, all in one transaction
 * under the advisory lock: a second instance starting meanwhile waits, then
 * finds the schema current. Refuses a database written by a newer program. */
static esim_err migrate(pg_store *s, esim_error *err)
{
    char lock[96], v[32];
    snprintf(lock, sizeof lock, "SELECT pg_advisory_xact_lock(%d)::text", MIGRATION_LOCK_KEY);
    esim_err rc = simple(s, "BEGIN", err);
    if (rc == ESIM_OK)
        rc = query_value(s, lock, v, sizeof v, err);
    if (rc == ESIM_OK)
        rc = ensure_schema(s, err);
    if (rc == ESIM_OK)
        rc = simple(s, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", err);
    if (rc == ESIM_OK)
        rc = query_value(s, "SELECT coalesce(max(version), 0) FROM schema_version", v, sizeof v,
                         err);
    int current = rc == ESIM_OK ? atoi(v) : 0;
    if (rc == ESIM_OK && current > store_pgsql_schema_version())
        rc = esim_fail(err, ESIM_ESTORE,
                       "the store has schema version %d, newer than this program's %d: "
                       "run a newer esim-mdm",
                       current, store_pgsql_schema_version());
    for (size_t i = 0; rc == ESIM_OK && i < sizeof migrations / sizeof migrations[0]; i++) {
        if (migrations[i].version <= current)
            continue;
        char bump[96];
        snprintf(bump, sizeof bump,
                 "DELETE FROM schema_version; INSERT INTO schema_version VALUES (%d)",
                 migrations[i].version);
        rc = simple(s, migrations[i].sql, err);
        if (rc == ESIM_OK)
            rc = simple(s, bump, err);
    }
    if (rc == ESIM_OK)
        rc = simple(s, "COMMIT", err);
    if (rc != ESIM_OK)
        simple(s, "ROLLBACK", NULL);
    return rc;
}

/* Quiet notices (CREATE ... IF NOT EXISTS tells when it skipped). */
static void no_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* What every connection of the store is set to, at open and after a
 * reconnection. */
static esim_err session_setup(pg_store *s, esim_error *err)
{
    PQsetNoticeProcessor(s->conn, no_notice, NULL);
    /* A query stuck behind a lock or a slow disk ends as a failed operation
     * after 5 s, unless the spec chose another limit. */
    char timeout[32];
    esim_err rc =
        query_value(s, "SELECT current_setting('statement_timeout')", timeout, sizeof timeout, err);
    if (rc == ESIM_OK && strcmp(timeout, "0") == 0)
        rc = simple(s, "SET statement_timeout = 5000", err);
    return rc;
}

esim_err store_pgsql_open(const char *conninfo, const store_options *opts, store **out,
                          esim_error *err)
{
    (void)opts; /* a commit is durable when it returns (synchronous_commit) */
    pg_store *s = calloc(1, sizeof *s);
    if (!s || !(s->conninfo = strdup(conninfo))) {
        free(s);
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    }
    s->base.ops = &pgsql_ops;
    s->conn = PQconnectdb(conninfo);
    esim_err rc = ESIM_OK;
    if (!s->conn)
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    else if (PQstatus(s->conn) != CONNECTION_OK)
        rc = pg_fail(s, err, "connect", NULL);
    if (rc == ESIM_OK)
        rc = session_setup(s, err);
    if (rc == ESIM_OK)
        rc = migrate(s, err);
    /* Notifications are per database, tables per schema: the channel is
     * named after the schema, so stores in other schemas hear nothing. */
    char schema[64];
    if (rc == ESIM_OK &&
        (rc = query_value(s, "SELECT current_schema()", schema, sizeof schema, err)) == ESIM_OK)
        snprintf(s->channel, sizeof s->channel, "esim_%s", schema);
    if (rc != ESIM_OK) {
        pg_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return ESIM_OK;
}
