/*
 * campaign_internal.h — the inside of the campaign layer (private to
 * campaign/, not installed): the campaign database beside the service's
 * store, the glue that feeds the engine with results and ticks through the
 * service's hooks and turns its requests into queued commands and pushes,
 * the admin API routes and the diagnosis. The layer's public header is
 * campaign/campaign.h.
 */
#ifndef ESIM_CAMPAIGN_CAMPAIGN_INTERNAL_H
#define ESIM_CAMPAIGN_CAMPAIGN_INTERNAL_H

#include <jansson.h>

#include "campaign/campaign.h"
#include "service/service.h"
#include "service/store.h"

/* ======================================================================
 * The campaign database (campaign_store.c): <data_dir>/campaigns.db, SQLite
 * in WAL mode. Campaigns, their device records and commands, EID manifests,
 * activation codes, groups, tags and the device facts learned from
 * DeviceInformation answers. Every function is one transaction.
 * ====================================================================== */

typedef struct cstore cstore;

/* Opens (creating) the database at |path|. ESIM_ESTORE when it cannot. */
esim_err cstore_open(const char *path, bool sync_normal, cstore **out, esim_error *err);
void cstore_close(cstore *cs); /* NULL ok */

esim_err cstore_begin(cstore *cs, esim_error *err);
esim_err cstore_commit(cstore *cs, esim_error *err);
void cstore_rollback(cstore *cs);

/* Inside a transaction: the campaign row, device records, a command. */
esim_err cstore_put_campaign(cstore *cs, const campaign *c, const char *spec_json, int64_t now,
                             esim_error *err);
esim_err cstore_put_device(cstore *cs, const campaign *c, size_t i, const char *cmd_uuid,
                           esim_error *err);
esim_err cstore_put_command(cstore *cs, const char *uuid, const char *campaign_id, int step,
                            esim_error *err);

/* Loading at start-up: every campaign row, then its devices and commands. */
typedef esim_err (*cstore_campaign_fn)(void *arg, const char *id, const char *spec_json, int state,
                                       int64_t created_ms);
esim_err cstore_each_campaign(cstore *cs, cstore_campaign_fn fn, void *arg, esim_error *err);
/* *devs (malloc'd; campaign_dev.reason malloc'd too) in index order, and the
 * command UUID of each device in *cmds (malloc'd array of 37-byte slots). */
esim_err cstore_load_devices(cstore *cs, const char *campaign_id, campaign_dev **devs,
                             char (**cmds)[37], size_t *n, esim_error *err);
typedef esim_err (*cstore_command_fn)(void *arg, const char *uuid, int step);
esim_err cstore_each_command(cstore *cs, const char *campaign_id, cstore_command_fn fn, void *arg,
                             esim_error *err);

/* Offline imports, each one transaction: rows replace earlier ones with the
 * same serial (manifest) or EID (codes). */
esim_err cstore_import_manifest(cstore *cs, const campaign_eid_row *rows, size_t n, int64_t now,
                                esim_error *err);
esim_err cstore_import_codes(cstore *cs, const campaign_code_row *rows, size_t n, int64_t now,
                             esim_error *err);
/* The EID a manifest gave |serial|: ESIM_ENOTFOUND when none. */
esim_err cstore_manifest_eid(cstore *cs, const char *serial, char eid[ESIM_EID_LEN + 1]);
/* The ICCID an activation-code row gave |eid| ("" when the row has none):
 * ESIM_ENOTFOUND when no row. */
esim_err cstore_code_iccid(cstore *cs, const char *eid, char iccid[21], char matching_id[256]);

/* Groups and tags. Names: 1 to 64 characters of [A-Za-z0-9._-]. */
esim_err cstore_group_put(cstore *cs, const char *name, const char *const *add, size_t n_add,
                          const char *const *remove, size_t n_remove, bool create, int64_t now,
                          esim_error *err);
esim_err cstore_group_delete(cstore *cs, const char *name, esim_error *err);
/* Members of a group, or devices with a tag: *udids malloc'd (65-byte slots). */
esim_err cstore_group_members(cstore *cs, const char *name, char (**udids)[65], size_t *n,
                              esim_error *err);
esim_err cstore_tag_devices(cstore *cs, const char *tag, char (**udids)[65], size_t *n,
                            esim_error *err);
/* Every group as {"name":…, "members":N}. */
esim_err cstore_groups_json(cstore *cs, json_t **out, esim_error *err);
esim_err cstore_tags_set(cstore *cs, const char *udid, const char *const *add, size_t n_add,
                         const char *const *remove, size_t n_remove, esim_error *err);
esim_err cstore_tags_json(cstore *cs, const char *udid, json_t **out, esim_error *err);
esim_err cstore_name_validate(const char *what, const char *name, esim_error *err);

/* What DeviceInformation answers taught the service about a device. */
typedef struct {
    int supervised; /* 1, 0, or -1 unknown */
    char os_version[32];
    char eid[ESIM_EID_LEN + 1]; /* the verified eSIM, when one was */
    char iccid[21];
    int64_t verified_ms; /* when the expected eSIM was last seen; 0 never */
    int64_t updated_ms;
} cstore_facts;

/* Inside a transaction. Fields left unknown (-1, "", 0) keep their old value. */
esim_err cstore_put_facts(cstore *cs, const char *udid, const cstore_facts *f, esim_error *err);
/* ESIM_ENOTFOUND when nothing is known (|out| then reads unknown). */
esim_err cstore_get_facts(cstore *cs, const char *udid, cstore_facts *out);

/* ======================================================================
 * The glue (campaign.c)
 * ====================================================================== */

typedef struct campaigns campaigns;

/*
 * Opens <data_dir>/campaigns.db, restores the campaigns it holds, and
 * registers a result hook and its timers on |svc|'s loop. *out is freed
 * with campaigns_free, before the service. ESIM_ESTORE, ESIM_ENOMEM, or
 * what esim_service_add_* return.
 */
esim_err campaigns_new(esim_service *svc, const char *data_dir, bool sync_normal, campaigns **out,
                       esim_error *err);
/* Writes what changed and frees. NULL ok. */
void campaigns_free(campaigns *cs);

cstore *campaigns_store(campaigns *cs);
esim_service *campaigns_service(campaigns *cs);

/* Creating a campaign from the API's JSON (docs/campaigns.md). On success
 * *out is the 201 body (caller's). ESIM_EINVAL with *field (static) and
 * |err|; ESIM_ENOTFOUND for an unknown group or device; ESIM_ESTORE. */
esim_err campaigns_create(campaigns *cs, const json_t *body, json_t **out, const char **field,
                          esim_error *err);
campaign *campaigns_find(campaigns *cs, const char *id);
/* "pause", "resume", "cancel". ESIM_ESTATE, ESIM_EINVAL (verb). */
esim_err campaigns_control(campaigns *cs, campaign *c, const char *verb, esim_error *err);
/* {id, name, state, steps, devices, counts{...}, refresh_acknowledged,
 *  pushes, commands, created_ms, smdp_url} */
json_t *campaigns_summary_json(campaigns *cs, const campaign *c);
json_t *campaigns_device_json(const campaign *c, size_t i);
json_t *campaigns_list_json(campaigns *cs);

/* Prometheus lines for /metrics: devices per campaign and state, pushes. */
void campaigns_metrics(campaigns *cs, esim_buf *out);

/* The most recent campaign record of |udid| (NULL, -1 when none). */
campaign *campaigns_latest_for_device(campaigns *cs, const char *udid, long *index);

/* Offline imports through the API. |text| is the file. */
esim_err campaigns_import_eids(campaigns *cs, const char *text, size_t len, json_t **out,
                               esim_error *err);
esim_err campaigns_import_codes(campaigns *cs, const char *text, size_t len, json_t **out,
                                esim_error *err);

/* ======================================================================
 * Diagnosis (campaign_diagnose.c)
 * ====================================================================== */

/* What a support engineer would check, as JSON: checks[] (each with name,
 * ok, detail), conclusion, next_action, kind. ESIM_ENOTFOUND unknown device. */
esim_err campaigns_diagnose(campaigns *cs, const char *udid, json_t **out, esim_error *err);

/* ======================================================================
 * Admin API (api_campaign.c)
 * ====================================================================== */

/* Adds the routes of campaigns, groups, tags, imports and diagnosis
 * (docs/campaigns.md) to |cs|'s service. What esim_service_add_route says. */
esim_err campaigns_add_routes(campaigns *cs, esim_error *err);

#endif
