/*
 * campaign_legacy.c — reads the campaign database an earlier version kept
 * beside the store (<data_dir>/campaigns.db, SQLite) and writes what it holds
 * into the service's store through store.h, whatever its back end, in one
 * unit; then renames the file so it is read once. Reading the old file is
 * the only SQLite left in the campaign code.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "campaign/campaign_internal.h"

/* Rows go to the store this many at a time. */
#define LEGACY_CHUNK 256

typedef struct {
    sqlite3 *db;
    store *st;
    esim_error *err;
} legacy;

static const char *text_at(sqlite3_stmt *q, int col)
{
    const unsigned char *v = sqlite3_column_text(q, col);
    return v ? (const char *)v : "";
}

static esim_err legacy_fail(legacy *l, const char *what)
{
    return esim_fail(l->err, ESIM_ESTORE, "cannot import the old campaign database (%s): %s", what,
                     sqlite3_errmsg(l->db));
}

/* Prepares |sql|; NULL (and |err| set) when the old file lacks what it reads. */
static sqlite3_stmt *query(legacy *l, const char *sql)
{
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(l->db, sql, -1, &q, NULL) != SQLITE_OK) {
        legacy_fail(l, sql);
        sqlite3_finalize(q);
        return NULL;
    }
    return q;
}

/* Ends a read loop: ESIM_OK when every row was read. */
static esim_err done(legacy *l, sqlite3_stmt *q, int r, esim_err rc, const char *what)
{
    if (rc == ESIM_OK && r != SQLITE_DONE)
        rc = legacy_fail(l, what);
    sqlite3_finalize(q);
    return rc;
}

static esim_err import_campaigns(legacy *l)
{
    sqlite3_stmt *q = query(l, "SELECT id, name, spec, state, created_ms, updated_ms"
                               " FROM campaigns ORDER BY created_ms");
    if (!q)
        return ESIM_ESTORE;
    esim_err rc = ESIM_OK;
    int r;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        store_campaign c = {.id = text_at(q, 0),
                            .name = text_at(q, 1),
                            .definition = text_at(q, 2),
                            .state = sqlite3_column_int(q, 3),
                            .created_ms = sqlite3_column_int64(q, 4)};
        rc = esim_store_campaign_save(l->st, c.id, &c, NULL, 0, NULL, 0, sqlite3_column_int64(q, 5),
                                      l->err);
    }
    return done(l, q, r, rc, "campaigns");
}

static esim_err import_commands(legacy *l)
{
    sqlite3_stmt *q =
        query(l, "SELECT uuid, campaign, step FROM campaign_commands ORDER BY campaign, rowid");
    if (!q)
        return ESIM_ESTORE;
    esim_err rc = ESIM_OK;
    int r;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        store_campaign_command cmd = {.step = sqlite3_column_int(q, 2)};
        snprintf(cmd.uuid, sizeof cmd.uuid, "%s", text_at(q, 0));
        rc = esim_store_campaign_save(l->st, text_at(q, 1), NULL, &cmd, 1, NULL, 0, 0, l->err);
    }
    return done(l, q, r, rc, "campaign commands");
}

static esim_err save_devices(legacy *l, const char *campaign_id, store_campaign_device *devs,
                             size_t *n)
{
    esim_err rc =
        *n ? esim_store_campaign_save(l->st, campaign_id, NULL, NULL, 0, devs, *n, 0, l->err)
           : ESIM_OK;
    for (size_t i = 0; i < *n; i++)
        free(devs[i].reason);
    *n = 0;
    return rc;
}

static esim_err import_devices(legacy *l)
{
    sqlite3_stmt *q = query(l, "SELECT campaign, idx, udid, eid, iccid, state, step, retries,"
                               " verify_tries, flags, pushes, not_now, changed_ms, next_ms,"
                               " deadline_ms, last_push_ms, push_state, cmd, reason"
                               " FROM campaign_devices ORDER BY campaign, idx");
    if (!q)
        return ESIM_ESTORE;
    store_campaign_device *devs = calloc(LEGACY_CHUNK, sizeof *devs);
    char current[128] = "";
    size_t n = 0;
    esim_err rc = devs ? ESIM_OK : esim_fail(l->err, ESIM_ENOMEM, "out of memory");
    int r = SQLITE_DONE;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        if (n == LEGACY_CHUNK || (n && strcmp(current, text_at(q, 0)) != 0))
            rc = save_devices(l, current, devs, &n);
        if (rc != ESIM_OK)
            break;
        snprintf(current, sizeof current, "%s", text_at(q, 0));
        store_campaign_device *d = &devs[n++];
        memset(d, 0, sizeof *d);
        d->index = (size_t)sqlite3_column_int64(q, 1);
        snprintf(d->udid, sizeof d->udid, "%s", text_at(q, 2));
        snprintf(d->eid, sizeof d->eid, "%s", text_at(q, 3));
        snprintf(d->iccid, sizeof d->iccid, "%s", text_at(q, 4));
        d->state = sqlite3_column_int(q, 5);
        d->step = sqlite3_column_int(q, 6);
        d->retries = sqlite3_column_int(q, 7);
        d->verify_tries = sqlite3_column_int(q, 8);
        d->flags = sqlite3_column_int(q, 9);
        d->pushes = sqlite3_column_int(q, 10);
        d->not_now = sqlite3_column_int64(q, 11);
        d->changed_ms = sqlite3_column_int64(q, 12);
        d->next_ms = sqlite3_column_int64(q, 13);
        d->deadline_ms = sqlite3_column_int64(q, 14);
        d->last_push_ms = sqlite3_column_int64(q, 15);
        d->push_state = sqlite3_column_int(q, 16);
        snprintf(d->command_uuid, sizeof d->command_uuid, "%s", text_at(q, 17));
        if (sqlite3_column_type(q, 18) != SQLITE_NULL && !(d->reason = strdup(text_at(q, 18))))
            rc = esim_fail(l->err, ESIM_ENOMEM, "out of memory");
    }
    if (rc == ESIM_OK)
        rc = save_devices(l, current, devs, &n);
    for (size_t i = 0; i < n; i++)
        free(devs[i].reason);
    free(devs);
    return done(l, q, r, rc, "campaign devices");
}

static esim_err import_manifest_and_codes(legacy *l)
{
    sqlite3_stmt *q = query(l, "SELECT serial, eid FROM manifest");
    if (!q)
        return ESIM_ESTORE;
    esim_err rc = ESIM_OK;
    int r;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        store_manifest_row row = {text_at(q, 0), text_at(q, 1)};
        rc = esim_store_manifest_import(l->st, &row, 1, 0, l->err);
    }
    if ((rc = done(l, q, r, rc, "manifest")) != ESIM_OK)
        return rc;
    q = query(l, "SELECT eid, code, smdp, matching_id, iccid, imported_ms FROM activation_codes");
    if (!q)
        return ESIM_ESTORE;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        store_code_row row = {text_at(q, 0), text_at(q, 1), text_at(q, 2), text_at(q, 3),
                              text_at(q, 4)};
        rc = esim_store_codes_import(l->st, &row, 1, sqlite3_column_int64(q, 5), l->err);
    }
    return done(l, q, r, rc, "activation codes");
}

static esim_err import_groups_and_tags(legacy *l)
{
    sqlite3_stmt *q = query(l, "SELECT name, created_ms FROM groups");
    if (!q)
        return ESIM_ESTORE;
    esim_err rc = ESIM_OK;
    int r;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        rc = esim_store_group_put(l->st, text_at(q, 0), NULL, 0, NULL, 0, true,
                                  sqlite3_column_int64(q, 1), l->err);
        if (rc == ESIM_EEXIST) /* imported before */
            rc = ESIM_OK;
    }
    if ((rc = done(l, q, r, rc, "groups")) != ESIM_OK)
        return rc;
    if (!(q = query(l, "SELECT grp, udid FROM group_members")))
        return ESIM_ESTORE;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        const char *udid = text_at(q, 1);
        rc = esim_store_group_put(l->st, text_at(q, 0), &udid, 1, NULL, 0, false, 0, l->err);
    }
    if ((rc = done(l, q, r, rc, "group members")) != ESIM_OK)
        return rc;
    if (!(q = query(l, "SELECT udid, tag FROM device_tags")))
        return ESIM_ESTORE;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        const char *tag = text_at(q, 1);
        rc = esim_store_tags_set(l->st, text_at(q, 0), &tag, 1, NULL, 0, l->err);
    }
    return done(l, q, r, rc, "device tags");
}

static esim_err import_facts(legacy *l)
{
    sqlite3_stmt *q = query(l, "SELECT udid, supervised, os_version, eid, iccid, verified_ms,"
                               " updated_ms FROM device_facts");
    if (!q)
        return ESIM_ESTORE;
    esim_err rc = ESIM_OK;
    int r;
    while (rc == ESIM_OK && (r = sqlite3_step(q)) == SQLITE_ROW) {
        store_device_facts f = {
            .supervised = sqlite3_column_type(q, 1) == SQLITE_NULL ? -1 : sqlite3_column_int(q, 1),
            .verified_ms = sqlite3_column_int64(q, 5),
            .updated_ms = sqlite3_column_int64(q, 6)};
        snprintf(f.udid, sizeof f.udid, "%s", text_at(q, 0));
        snprintf(f.os_version, sizeof f.os_version, "%s", text_at(q, 2));
        snprintf(f.eid, sizeof f.eid, "%s", text_at(q, 3));
        snprintf(f.iccid, sizeof f.iccid, "%s", text_at(q, 4));
        rc = esim_store_facts_put(l->st, &f, 1, l->err);
    }
    return done(l, q, r, rc, "device facts");
}

esim_err campaigns_import_legacy(store *st, const char *path, esim_error *err)
{
    if (access(path, F_OK) != 0)
        return ESIM_OK;
    /* It held what the store holds now: only the service's user may read
     * it, and the renamed copy it leaves behind. */
    if (esim_make_private_db(path, err) != ESIM_OK)
        return ESIM_ESTORE;
    legacy l = {NULL, st, err};
    /* Read-write, so a log an interrupted run left is applied first. */
    if (sqlite3_open_v2(path, &l.db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        esim_err rc = esim_fail(err, ESIM_ESTORE, "cannot open the old campaign database %s: %s",
                                path, l.db ? sqlite3_errmsg(l.db) : "out of memory");
        sqlite3_close(l.db);
        return rc;
    }
    sqlite3_busy_timeout(l.db, 5000);
    esim_err rc = esim_store_unit_begin(st, err);
    if (rc == ESIM_OK) {
        rc = import_campaigns(&l);
        if (rc == ESIM_OK)
            rc = import_commands(&l);
        if (rc == ESIM_OK)
            rc = import_devices(&l);
        if (rc == ESIM_OK)
            rc = import_manifest_and_codes(&l);
        if (rc == ESIM_OK)
            rc = import_groups_and_tags(&l);
        if (rc == ESIM_OK)
            rc = import_facts(&l);
        esim_err end = esim_store_unit_end(st, rc == ESIM_OK, err);
        if (rc == ESIM_OK)
            rc = end;
    }
    sqlite3_close(l.db);
    if (rc != ESIM_OK)
        return rc;
    char done_path[4200];
    snprintf(done_path, sizeof done_path, "%s.imported", path);
    if (rename(path, done_path) != 0)
        return esim_fail(err, ESIM_EIO,
                         "imported %s into the store, but cannot rename it to %s: %s", path,
                         done_path, strerror(errno));
    return ESIM_OK;
}
