/*
 * campaign_store.c — the campaign database beside the service's store
 * (<data_dir>/campaigns.db, SQLite, WAL): campaigns and their per-device
 * records, EID manifests, activation codes, groups, tags and device facts.
 * The hot writes (device records) use cached statements inside the caller's
 * transaction, so a batch of thousands of changes is one commit.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "campaign/campaign_internal.h"

struct cstore {
    sqlite3 *db;
    sqlite3_stmt *put_device, *put_command, *put_facts;
    /* Read once per device when a campaign is created: prepared once. */
    sqlite3_stmt *get_manifest, *get_code, *get_facts;
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS campaigns(id TEXT PRIMARY KEY, name TEXT, spec TEXT NOT NULL,"
    " state INTEGER NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS campaign_devices(campaign TEXT NOT NULL, idx INTEGER NOT NULL,"
    " udid TEXT NOT NULL, eid TEXT, iccid TEXT, state INTEGER, step INTEGER, retries INTEGER,"
    " verify_tries INTEGER, flags INTEGER, pushes INTEGER, not_now INTEGER, changed_ms INTEGER,"
    " next_ms INTEGER, deadline_ms INTEGER, last_push_ms INTEGER, push_state INTEGER, cmd TEXT,"
    " reason TEXT, PRIMARY KEY(campaign, idx));"
    "CREATE INDEX IF NOT EXISTS campaign_devices_udid ON campaign_devices(udid);"
    "CREATE TABLE IF NOT EXISTS campaign_commands(uuid TEXT PRIMARY KEY, campaign TEXT NOT NULL,"
    " step INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS manifest(serial TEXT PRIMARY KEY, eid TEXT NOT NULL,"
    " imported_ms INTEGER);"
    "CREATE TABLE IF NOT EXISTS activation_codes(eid TEXT PRIMARY KEY, code TEXT NOT NULL,"
    " smdp TEXT, matching_id TEXT, iccid TEXT, imported_ms INTEGER);"
    "CREATE TABLE IF NOT EXISTS groups(name TEXT PRIMARY KEY, created_ms INTEGER);"
    "CREATE TABLE IF NOT EXISTS group_members(grp TEXT NOT NULL, udid TEXT NOT NULL,"
    " PRIMARY KEY(grp, udid));"
    "CREATE TABLE IF NOT EXISTS device_tags(udid TEXT NOT NULL, tag TEXT NOT NULL,"
    " PRIMARY KEY(udid, tag));"
    "CREATE INDEX IF NOT EXISTS device_tags_tag ON device_tags(tag);"
    "CREATE TABLE IF NOT EXISTS device_facts(udid TEXT PRIMARY KEY, supervised INTEGER,"
    " os_version TEXT, eid TEXT, iccid TEXT, verified_ms INTEGER, updated_ms INTEGER);";

static esim_err db_fail(cstore *cs, esim_error *err, const char *what)
{
    return esim_fail(err, ESIM_ESTORE, "campaign database: %s: %s", what, sqlite3_errmsg(cs->db));
}

static esim_err exec(cstore *cs, const char *sql, esim_error *err)
{
    char *msg = NULL;
    if (sqlite3_exec(cs->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        esim_err rc = esim_fail(err, ESIM_ESTORE, "campaign database: %s", msg ? msg : "error");
        sqlite3_free(msg);
        return rc;
    }
    return ESIM_OK;
}

esim_err cstore_open(const char *path, bool sync_normal, cstore **out, esim_error *err)
{
    cstore *cs = calloc(1, sizeof *cs);
    if (!cs)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (esim_make_private_db(path, err) != ESIM_OK) {
        free(cs);
        return ESIM_ESTORE;
    }
    if (sqlite3_open_v2(path, &cs->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        esim_err rc = esim_fail(err, ESIM_ESTORE, "cannot open the campaign database %s: %s", path,
                                cs->db ? sqlite3_errmsg(cs->db) : "out of memory");
        cstore_close(cs);
        return rc;
    }
    sqlite3_busy_timeout(cs->db, 5000);
    esim_err rc = exec(cs, "PRAGMA journal_mode=WAL", err);
    if (rc == ESIM_OK)
        rc = exec(cs, sync_normal ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL", err);
    if (rc == ESIM_OK)
        rc = exec(cs, schema, err);
    if (rc == ESIM_OK &&
        (sqlite3_prepare_v2(cs->db,
                            "INSERT OR REPLACE INTO campaign_devices VALUES(?1,?2,?3,?4,?5,?6,?7,"
                            "?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)",
                            -1, &cs->put_device, NULL) != SQLITE_OK ||
         sqlite3_prepare_v2(cs->db, "INSERT OR REPLACE INTO campaign_commands VALUES(?1,?2,?3)", -1,
                            &cs->put_command, NULL) != SQLITE_OK ||
         sqlite3_prepare_v2(
             cs->db,
             "INSERT INTO device_facts VALUES(?1,?2,?3,?4,?5,?6,?7) ON CONFLICT(udid) DO UPDATE SET"
             " supervised=CASE WHEN ?2>=0 THEN ?2 ELSE supervised END,"
             " os_version=CASE WHEN ?3!='' THEN ?3 ELSE os_version END,"
             " eid=CASE WHEN ?4!='' THEN ?4 ELSE eid END,"
             " iccid=CASE WHEN ?4!='' THEN ?5 ELSE iccid END,"
             " verified_ms=CASE WHEN ?6>0 THEN ?6 ELSE verified_ms END, updated_ms=?7",
             -1, &cs->put_facts, NULL) != SQLITE_OK ||
         sqlite3_prepare_v2(cs->db, "SELECT eid FROM manifest WHERE serial=?1", -1,
                            &cs->get_manifest, NULL) != SQLITE_OK ||
         sqlite3_prepare_v2(cs->db, "SELECT iccid, matching_id FROM activation_codes WHERE eid=?1",
                            -1, &cs->get_code, NULL) != SQLITE_OK ||
         sqlite3_prepare_v2(cs->db,
                            "SELECT supervised, os_version, eid, iccid, verified_ms, updated_ms"
                            " FROM device_facts WHERE udid=?1",
                            -1, &cs->get_facts, NULL) != SQLITE_OK))
        rc = db_fail(cs, err, "preparing statements");
    if (rc != ESIM_OK) {
        cstore_close(cs);
        return rc;
    }
    *out = cs;
    return ESIM_OK;
}

void cstore_close(cstore *cs)
{
    if (!cs)
        return;
    sqlite3_finalize(cs->put_device);
    sqlite3_finalize(cs->put_command);
    sqlite3_finalize(cs->put_facts);
    sqlite3_finalize(cs->get_manifest);
    sqlite3_finalize(cs->get_code);
    sqlite3_finalize(cs->get_facts);
    sqlite3_close(cs->db);
    free(cs);
}

esim_err cstore_begin(cstore *cs, esim_error *err)
{
    return exec(cs, "BEGIN IMMEDIATE", err);
}

esim_err cstore_commit(cstore *cs, esim_error *err)
{
    esim_err rc = exec(cs, "COMMIT", err);
    if (rc != ESIM_OK)
        cstore_rollback(cs);
    return rc;
}

void cstore_rollback(cstore *cs)
{
    if (!sqlite3_get_autocommit(cs->db))
        sqlite3_exec(cs->db, "ROLLBACK", NULL, NULL, NULL);
}

static esim_err step_done(cstore *cs, sqlite3_stmt *st, esim_error *err, const char *what)
{
    int r = sqlite3_step(st);
    esim_err rc = (r == SQLITE_DONE || r == SQLITE_ROW) ? ESIM_OK : db_fail(cs, err, what);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

esim_err cstore_put_campaign(cstore *cs, const campaign *c, const char *spec_json, int64_t now,
                             esim_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(cs->db,
                           "INSERT INTO campaigns VALUES(?1,?2,?3,?4,?5,?6) ON CONFLICT(id)"
                           " DO UPDATE SET state=?4, spec=?3, updated_ms=?6",
                           -1, &st, NULL) != SQLITE_OK)
        return db_fail(cs, err, "saving a campaign");
    sqlite3_bind_text(st, 1, campaign_id(c), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, campaign_name(c), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, spec_json, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, (int)campaign_get_state(c));
    sqlite3_bind_int64(st, 5, campaign_created_ms(c));
    sqlite3_bind_int64(st, 6, now);
    esim_err rc = step_done(cs, st, err, "saving a campaign");
    sqlite3_finalize(st);
    return rc;
}

esim_err cstore_put_device(cstore *cs, const campaign *c, size_t i, const char *cmd_uuid,
                           esim_error *err)
{
    const campaign_dev *d = campaign_device_at(c, i);
    sqlite3_stmt *st = cs->put_device;
    int flags = d->esim_installed | d->refresh_acked << 1 | d->need_queue << 2;
    sqlite3_bind_text(st, 1, campaign_id(c), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (int64_t)i);
    sqlite3_bind_text(st, 3, d->udid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, d->eid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, d->iccid, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, d->state);
    sqlite3_bind_int(st, 7, d->step);
    sqlite3_bind_int(st, 8, d->retries);
    sqlite3_bind_int(st, 9, d->verify_tries);
    sqlite3_bind_int(st, 10, flags);
    sqlite3_bind_int(st, 11, d->pushes);
    sqlite3_bind_int64(st, 12, d->not_now);
    sqlite3_bind_int64(st, 13, d->changed_ms);
    sqlite3_bind_int64(st, 14, d->next_ms);
    sqlite3_bind_int64(st, 15, d->deadline_ms);
    sqlite3_bind_int64(st, 16, d->last_push_ms);
    sqlite3_bind_int(st, 17, d->push_state);
    sqlite3_bind_text(st, 18, cmd_uuid ? cmd_uuid : "", -1, SQLITE_STATIC);
    if (d->reason)
        sqlite3_bind_text(st, 19, d->reason, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 19);
    return step_done(cs, st, err, "saving a device record");
}

esim_err cstore_put_command(cstore *cs, const char *uuid, const char *campaign_id, int step,
                            esim_error *err)
{
    sqlite3_stmt *st = cs->put_command;
    sqlite3_bind_text(st, 1, uuid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, campaign_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, step);
    return step_done(cs, st, err, "saving a command");
}

static const char *col_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t ? (const char *)t : "";
}

static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        n = size - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

esim_err cstore_each_campaign(cstore *cs, cstore_campaign_fn fn, void *arg, esim_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(cs->db,
                           "SELECT id, spec, state, created_ms FROM campaigns ORDER BY"
                           " created_ms",
                           -1, &st, NULL) != SQLITE_OK)
        return db_fail(cs, err, "reading campaigns");
    esim_err rc = ESIM_OK;
    int r;
    while (rc == ESIM_OK && (r = sqlite3_step(st)) == SQLITE_ROW)
        rc = fn(arg, col_text(st, 0), col_text(st, 1), sqlite3_column_int(st, 2),
                sqlite3_column_int64(st, 3));
    sqlite3_finalize(st);
    return rc;
}

esim_err cstore_load_devices(cstore *cs, const char *campaign_id, campaign_dev **devs,
                             char (**cmds)[37], size_t *n, esim_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(cs->db,
                           "SELECT udid, eid, iccid, state, step, retries, verify_tries,"
                           " flags, pushes, not_now, changed_ms, next_ms, deadline_ms,"
                           " last_push_ms, push_state, cmd, reason FROM campaign_devices"
                           " WHERE campaign=?1 ORDER BY idx",
                           -1, &st, NULL) != SQLITE_OK)
        return db_fail(cs, err, "reading device records");
    sqlite3_bind_text(st, 1, campaign_id, -1, SQLITE_STATIC);
    size_t cap = 0, len = 0;
    campaign_dev *d = NULL;
    char(*c)[37] = NULL;
    esim_err rc = ESIM_OK;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        if (len == cap) {
            cap = cap ? cap * 2 : 256;
            campaign_dev *nd = realloc(d, cap * sizeof *nd);
            char(*nc)[37] = nd ? realloc(c, cap * sizeof *nc) : NULL;
            if (nd)
                d = nd;
            if (!nd || !nc) {
                rc = esim_fail(err, ESIM_ENOMEM, "out of memory reading device records");
                break;
            }
            c = nc;
        }
        campaign_dev *x = &d[len];
        memset(x, 0, sizeof *x);
        copy_str(x->udid, sizeof x->udid, col_text(st, 0));
        copy_str(x->eid, sizeof x->eid, col_text(st, 1));
        copy_str(x->iccid, sizeof x->iccid, col_text(st, 2));
        x->state = (uint8_t)sqlite3_column_int(st, 3);
        x->step = (uint8_t)sqlite3_column_int(st, 4);
        x->retries = (uint8_t)sqlite3_column_int(st, 5);
        x->verify_tries = (uint8_t)sqlite3_column_int(st, 6);
        int flags = sqlite3_column_int(st, 7);
        x->esim_installed = flags & 1;
        x->refresh_acked = (flags >> 1) & 1;
        x->need_queue = (flags >> 2) & 1;
        x->pushes = (uint16_t)sqlite3_column_int(st, 8);
        x->not_now = (uint32_t)sqlite3_column_int64(st, 9);
        x->changed_ms = sqlite3_column_int64(st, 10);
        x->next_ms = sqlite3_column_int64(st, 11);
        x->deadline_ms = sqlite3_column_int64(st, 12);
        x->last_push_ms = sqlite3_column_int64(st, 13);
        x->push_state = (uint8_t)sqlite3_column_int(st, 14);
        copy_str(c[len], sizeof c[len], col_text(st, 15));
        if (sqlite3_column_type(st, 16) != SQLITE_NULL) {
            x->reason = strdup(col_text(st, 16));
            if (!x->reason) {
                rc = esim_fail(err, ESIM_ENOMEM, "out of memory reading device records");
                break;
            }
        }
        len++;
    }
    if (rc == ESIM_OK && r != SQLITE_DONE)
        rc = db_fail(cs, err, "reading device records");
    sqlite3_finalize(st);
    if (rc != ESIM_OK) {
        for (size_t i = 0; i < len; i++)
            free(d[i].reason);
        free(d);
        free(c);
        return rc;
    }
    *devs = d;
    *cmds = c;
    *n = len;
    return ESIM_OK;
}

esim_err cstore_each_command(cstore *cs, const char *campaign_id, cstore_command_fn fn, void *arg,
                             esim_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(cs->db,
                           "SELECT uuid, step FROM campaign_commands WHERE campaign=?1"
                           " ORDER BY rowid",
                           -1, &st, NULL) != SQLITE_OK)
        return db_fail(cs, err, "reading commands");
    sqlite3_bind_text(st, 1, campaign_id, -1, SQLITE_STATIC);
    esim_err rc = ESIM_OK;
    while (rc == ESIM_OK && sqlite3_step(st) == SQLITE_ROW)
        rc = fn(arg, col_text(st, 0), sqlite3_column_int(st, 1));
    sqlite3_finalize(st);
    return rc;
}

/* ---- imports ---------------------------------------------------------------- */

esim_err cstore_import_manifest(cstore *cs, const campaign_eid_row *rows, size_t n, int64_t now,
                                esim_error *err)
{
    sqlite3_stmt *st = NULL;
    esim_err rc = cstore_begin(cs, err);
    if (rc != ESIM_OK)
        return rc;
    if (sqlite3_prepare_v2(cs->db, "INSERT OR REPLACE INTO manifest VALUES(?1,?2,?3)", -1, &st,
                           NULL) != SQLITE_OK) {
        rc = db_fail(cs, err, "importing the manifest");
        goto out;
    }
    for (size_t i = 0; i < n && rc == ESIM_OK; i++) {
        sqlite3_bind_text(st, 1, rows[i].serial, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, rows[i].eid, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, now);
        rc = step_done(cs, st, err, "importing the manifest");
    }
out:
    sqlite3_finalize(st);
    if (rc != ESIM_OK) {
        cstore_rollback(cs);
        return rc;
    }
    return cstore_commit(cs, err);
}

esim_err cstore_import_codes(cstore *cs, const campaign_code_row *rows, size_t n, int64_t now,
                             esim_error *err)
{
    sqlite3_stmt *st = NULL;
    esim_err rc = cstore_begin(cs, err);
    if (rc != ESIM_OK)
        return rc;
    if (sqlite3_prepare_v2(cs->db,
                           "INSERT OR REPLACE INTO activation_codes VALUES(?1,?2,?3,?4,?5,?6)", -1,
                           &st, NULL) != SQLITE_OK) {
        rc = db_fail(cs, err, "importing activation codes");
        goto out;
    }
    for (size_t i = 0; i < n && rc == ESIM_OK; i++) {
        sqlite3_bind_text(st, 1, rows[i].eid, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, rows[i].code, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, rows[i].smdp_address, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, rows[i].matching_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, rows[i].iccid, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 6, now);
        rc = step_done(cs, st, err, "importing activation codes");
    }
out:
    sqlite3_finalize(st);
    if (rc != ESIM_OK) {
        cstore_rollback(cs);
        return rc;
    }
    return cstore_commit(cs, err);
}

esim_err cstore_manifest_eid(cstore *cs, const char *serial, char eid[ESIM_EID_LEN + 1])
{
    sqlite3_stmt *st = cs->get_manifest;
    esim_err rc = ESIM_ENOTFOUND;
    sqlite3_bind_text(st, 1, serial, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        copy_str(eid, ESIM_EID_LEN + 1, col_text(st, 0));
        rc = ESIM_OK;
    } else if (r != SQLITE_DONE)
        rc = ESIM_ESTORE;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

esim_err cstore_code_iccid(cstore *cs, const char *eid, char iccid[21], char matching_id[256])
{
    sqlite3_stmt *st = cs->get_code;
    esim_err rc = ESIM_ENOTFOUND;
    sqlite3_bind_text(st, 1, eid, -1, SQLITE_STATIC);
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        copy_str(iccid, 21, col_text(st, 0));
        copy_str(matching_id, 256, col_text(st, 1));
        rc = ESIM_OK;
    } else if (r != SQLITE_DONE)
        rc = ESIM_ESTORE;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

/* ---- groups and tags ---------------------------------------------------------- */

esim_err cstore_name_validate(const char *what, const char *name, esim_error *err)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > 64)
        return esim_fail(err, ESIM_EINVAL, "%s name must have 1 to 64 characters", what);
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("._-", name[i]))
            return esim_fail(err, ESIM_EINVAL,
                             "%s name '%s' may hold only letters, digits, '.', '_' and '-'", what,
                             name);
    return ESIM_OK;
}

static esim_err run_members(cstore *cs, const char *sql, const char *a, const char *const *list,
                            size_t n, esim_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(cs->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_fail(cs, err, "updating members");
    esim_err rc = ESIM_OK;
    for (size_t i = 0; i < n && rc == ESIM_OK; i++) {
        sqlite3_bind_text(st, 1, a, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, list[i], -1, SQLITE_STATIC);
        rc = step_done(cs, st, err, "updating members");
    }
    sqlite3_finalize(st);
    return rc;
}

static bool group_exists(cstore *cs, const char *name)
{
    sqlite3_stmt *st = NULL;
    bool found = false;
    if (sqlite3_prepare_v2(cs->db, "SELECT 1 FROM groups WHERE name=?1", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
        found = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    return found;
}

esim_err cstore_group_put(cstore *cs, const char *name, const char *const *add, size_t n_add,
                          const char *const *remove, size_t n_remove, bool create, int64_t now,
                          esim_error *err)
{
    esim_err rc = cstore_name_validate("group", name, err);
    if (rc != ESIM_OK)
        return rc;
    for (size_t i = 0; i < n_add; i++)
        if ((rc = esim_udid_validate(add[i], err)) != ESIM_OK)
            return rc;
    if ((rc = cstore_begin(cs, err)) != ESIM_OK)
        return rc;
    bool exists = group_exists(cs, name);
    if (create && exists)
        rc = esim_fail(err, ESIM_EEXIST, "group %s already exists", name);
    else if (!create && !exists)
        rc = esim_fail(err, ESIM_ENOTFOUND, "no group named %s", name);
    if (rc == ESIM_OK && create) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(cs->db, "INSERT INTO groups VALUES(?1, ?2)", -1, &st, NULL) !=
            SQLITE_OK)
            rc = db_fail(cs, err, "creating a group");
        else {
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, now);
            rc = step_done(cs, st, err, "creating a group");
        }
        sqlite3_finalize(st);
    }
    if (rc == ESIM_OK)
        rc = run_members(cs, "INSERT OR IGNORE INTO group_members VALUES(?1, ?2)", name, add, n_add,
                         err);
    if (rc == ESIM_OK)
        rc = run_members(cs, "DELETE FROM group_members WHERE grp=?1 AND udid=?2", name, remove,
                         n_remove, err);
    if (rc != ESIM_OK) {
        cstore_rollback(cs);
        return rc;
    }
    return cstore_commit(cs, err);
}

esim_err cstore_group_delete(cstore *cs, const char *name, esim_error *err)
{
    esim_err rc = cstore_begin(cs, err);
    if (rc != ESIM_OK)
        return rc;
    if (!group_exists(cs, name))
        rc = esim_fail(err, ESIM_ENOTFOUND, "no group named %s", name);
    if (rc == ESIM_OK)
        rc = run_members(cs, "DELETE FROM group_members WHERE grp=?1 AND ?2=?2", name,
                         (const char *const[]){""}, 1, err);
    if (rc == ESIM_OK)
        rc = run_members(cs, "DELETE FROM groups WHERE name=?1 AND ?2=?2", name,
                         (const char *const[]){""}, 1, err);
    if (rc != ESIM_OK) {
        cstore_rollback(cs);
        return rc;
    }
    return cstore_commit(cs, err);
}

static esim_err collect_udids(cstore *cs, const char *sql, const char *key, char (**udids)[65],
                              size_t *n, esim_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(cs->db, sql, -1, &st, NULL) != SQLITE_OK)
        return db_fail(cs, err, "reading members");
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    size_t cap = 0, len = 0;
    char(*u)[65] = NULL;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (len == cap) {
            cap = cap ? cap * 2 : 64;
            char(*nu)[65] = realloc(u, cap * sizeof *nu);
            if (!nu) {
                free(u);
                sqlite3_finalize(st);
                return esim_fail(err, ESIM_ENOMEM, "out of memory");
            }
            u = nu;
        }
        copy_str(u[len++], 65, col_text(st, 0));
    }
    sqlite3_finalize(st);
    *udids = u;
    *n = len;
    return ESIM_OK;
}

esim_err cstore_group_members(cstore *cs, const char *name, char (**udids)[65], size_t *n,
                              esim_error *err)
{
    if (!group_exists(cs, name))
        return esim_fail(err, ESIM_ENOTFOUND, "no group named %s", name);
    return collect_udids(cs, "SELECT udid FROM group_members WHERE grp=?1 ORDER BY udid", name,
                         udids, n, err);
}

esim_err cstore_tag_devices(cstore *cs, const char *tag, char (**udids)[65], size_t *n,
                            esim_error *err)
{
    return collect_udids(cs, "SELECT udid FROM device_tags WHERE tag=?1 ORDER BY udid", tag, udids,
                         n, err);
}

esim_err cstore_groups_json(cstore *cs, json_t **out, esim_error *err)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(cs->db,
                           "SELECT g.name, (SELECT count(*) FROM group_members m WHERE"
                           " m.grp=g.name) FROM groups g ORDER BY g.name",
                           -1, &st, NULL) != SQLITE_OK)
        return db_fail(cs, err, "reading groups");
    json_t *arr = json_array();
    while (arr && sqlite3_step(st) == SQLITE_ROW)
        json_array_append_new(arr, json_pack("{s:s, s:I}", "name", col_text(st, 0), "members",
                                             (json_int_t)sqlite3_column_int64(st, 1)));
    sqlite3_finalize(st);
    if (!arr)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    *out = arr;
    return ESIM_OK;
}

esim_err cstore_tags_set(cstore *cs, const char *udid, const char *const *add, size_t n_add,
                         const char *const *remove, size_t n_remove, esim_error *err)
{
    esim_err rc = esim_udid_validate(udid, err);
    for (size_t i = 0; rc == ESIM_OK && i < n_add; i++)
        rc = cstore_name_validate("tag", add[i], err);
    if (rc != ESIM_OK)
        return rc;
    if ((rc = cstore_begin(cs, err)) != ESIM_OK)
        return rc;
    rc = run_members(cs, "INSERT OR IGNORE INTO device_tags VALUES(?1, ?2)", udid, add, n_add, err);
    if (rc == ESIM_OK)
        rc = run_members(cs, "DELETE FROM device_tags WHERE udid=?1 AND tag=?2", udid, remove,
                         n_remove, err);
    if (rc != ESIM_OK) {
        cstore_rollback(cs);
        return rc;
    }
    return cstore_commit(cs, err);
}

esim_err cstore_tags_json(cstore *cs, const char *udid, json_t **out, esim_error *err)
{
    char(*tags)[65] = NULL;
    size_t n = 0;
    esim_err rc = collect_udids(cs, "SELECT tag FROM device_tags WHERE udid=?1 ORDER BY tag", udid,
                                &tags, &n, err);
    if (rc != ESIM_OK)
        return rc;
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_string(tags[i]));
    free(tags);
    if (!arr)
        return esim_fail(err, ESIM_ENOMEM, "out of memory");
    *out = arr;
    return ESIM_OK;
}

/* ---- facts -------------------------------------------------------------------------- */

esim_err cstore_put_facts(cstore *cs, const char *udid, const cstore_facts *f, esim_error *err)
{
    sqlite3_stmt *st = cs->put_facts;
    sqlite3_bind_text(st, 1, udid, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, f->supervised);
    sqlite3_bind_text(st, 3, f->os_version, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, f->eid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, f->iccid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, f->verified_ms);
    sqlite3_bind_int64(st, 7, f->updated_ms);
    return step_done(cs, st, err, "saving device facts");
}

esim_err cstore_get_facts(cstore *cs, const char *udid, cstore_facts *out)
{
    memset(out, 0, sizeof *out);
    out->supervised = -1;
    sqlite3_stmt *st = cs->get_facts;
    sqlite3_bind_text(st, 1, udid, -1, SQLITE_STATIC);
    esim_err rc = ESIM_ENOTFOUND;
    int r = sqlite3_step(st);
    if (r == SQLITE_ROW) {
        out->supervised =
            sqlite3_column_type(st, 0) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 0);
        copy_str(out->os_version, sizeof out->os_version, col_text(st, 1));
        copy_str(out->eid, sizeof out->eid, col_text(st, 2));
        copy_str(out->iccid, sizeof out->iccid, col_text(st, 3));
        out->verified_ms = sqlite3_column_int64(st, 4);
        out->updated_ms = sqlite3_column_int64(st, 5);
        rc = ESIM_OK;
    } else if (r != SQLITE_DONE)
        rc = ESIM_ESTORE;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}
