/*
 * campaign_internal.h — the inside of the campaign layer (private to
 * campaign/, not installed): the import of an earlier version's campaign
 * database into the service's store, the glue that feeds the engine with results and ticks through
 * the service's hooks and turns its requests into queued commands and pushes, the admin API routes
 * and the diagnosis. The layer's public header is campaign/campaign.h.
 */
#ifndef ESIM_CAMPAIGN_CAMPAIGN_INTERNAL_H
#define ESIM_CAMPAIGN_CAMPAIGN_INTERNAL_H

#include <jansson.h>

#include "campaign/campaign_engine.h"
#include "service/service.h"
#include "service/store.h"

/* ======================================================================
 * Campaign records live in the service's store (service/store.h:
 * esim_store_campaign_save, groups, tags, manifests, codes, facts), in the
 * same database as the queues. campaign_legacy.c moves what an earlier
 * version kept in <data_dir>/campaigns.db into it.
 * ====================================================================== */

/*
 * Imports the campaign database at |path| (campaigns, device records,
 * commands, EID manifests, activation codes, groups, tags, device facts)
 * into |st| as one unit, then renames it to "<path>.imported" so it is read
 * once. Nothing to do (ESIM_OK) when there is no file at |path|; importing
 * the same file twice changes nothing more.
 *   ESIM_ESTORE  the file cannot be read, or the store refused a record: the
 *                store is left as it was and the file where it was.
 *   ESIM_EIO     imported, but the file could not be renamed.
 */
esim_err campaigns_import_legacy(store *st, const char *path, esim_error *err);

/* ======================================================================
 * The glue (campaign.c)
 * ====================================================================== */

typedef struct campaigns campaigns;

/*
 * Imports <data_dir>/campaigns.db (or ./campaigns.db without a data
 * directory) if an earlier version left one, restores the campaigns the
 * service's store holds, and registers a result hook and its timers on
 * |svc|'s loop. *out is freed with campaigns_free, before the service.
 * ESIM_ESTORE, ESIM_EIO, ESIM_ENOMEM, or what esim_service_add_* return.
 */
esim_err campaigns_new(esim_service *svc, const char *data_dir, campaigns **out, esim_error *err);
/* Writes what changed and frees. NULL ok. */
void campaigns_free(campaigns *cs);

esim_service *campaigns_service(campaigns *cs);

/* Creating a campaign from the API's JSON |body| (docs/campaigns.md,
 * taken) and answering |r|: 201 with the campaign, 200 for a dry run;
 * 400 with the field; 404 for an unknown group or device; 503 when the
 * store fails. The store's part runs as a store job (on a pool worker
 * with PostgreSQL), so |r| may be answered after this returns. */
void campaigns_create(campaigns *cs, esim_api_request *r, json_t *body);
/* Campaign |id| as this instance shows it now (its memory only). */
campaign *campaigns_find(campaigns *cs, const char *id);
/* What answers an API read of campaigns, from memory (campaigns_find,
 * campaigns_list_json). */
typedef void (*campaigns_answer_fn)(campaigns *cs, esim_api_request *r);
/* Brings up to date what the API shows of campaign |id| (NULL: of the
 * list) before |answer| runs: on a store several instances share, a copy
 * of a campaign another instance drives older than half a second is read
 * again, and an unknown id or the list first reads the rows and leases.
 * With a store pool those reads are a store job and |answer| runs from its
 * done (|r| deferred); else, and when nothing is to be read, at once. */
void campaigns_view(campaigns *cs, esim_api_request *r, const char *id, campaigns_answer_fn answer);
/* "pause", "resume", "cancel" of campaign |id|, answering |r|: 200 with the
 * campaign; 404 unknown; 409 (ESIM_ESTATE) when its state does not allow
 * it; 503 when the store fails. On a campaign another instance drives the
 * decision is taken on the store's row. The store's part runs as a store
 * job (on a pool worker with PostgreSQL): |r| may be answered after this
 * returns. */
void campaigns_control(campaigns *cs, esim_api_request *r, const char *id, const char *verb);
/* {id, name, state, steps, devices, counts{...}, refresh_acknowledged,
 *  pushes, commands, created_ms, smdp_url} */
/* The warnings given when |c| was created ({"total", "by_kind", "first":
 * up to 100}), or JSON null when not known (created before a restart). */
json_t *campaigns_creation_warnings(campaigns *cs, const campaign *c);
json_t *campaigns_summary_json(campaigns *cs, const campaign *c);
json_t *campaigns_device_json(const campaign *c, size_t i);
json_t *campaigns_list_json(campaigns *cs);

/* Prometheus lines for /metrics: devices per campaign and state, pushes. */
void campaigns_metrics(campaigns *cs, esim_buf *out);

/* The most recent campaign record of |udid| (NULL, -1 when none). */
campaign *campaigns_latest_for_device(campaigns *cs, const char *udid, long *index);

/* Offline imports through the API. |text| is the file. They touch the
 * store |st| only (nothing of the engines'), so their routes run on a
 * store pool worker with that worker's store. */
esim_err campaigns_import_eids(store *st, const char *text, size_t len, json_t **out,
                               esim_error *err);
esim_err campaigns_import_codes(store *st, const char *text, size_t len, json_t **out,
                                esim_error *err);

/* ======================================================================
 * Diagnosis (campaign_diagnose.c)
 * ====================================================================== */

/* Answers |r| with what a support engineer would check of device |udid|,
 * as JSON: checks[] (each with name, ok, detail), conclusion, next_action,
 * kind; 400 for a bad UDID, 404 for an unknown device, 503 when the store
 * fails. The store's part (the device, its queue, facts and ledger) is a
 * store job (on a pool worker with PostgreSQL), what the campaigns hold of
 * the device is read on the loop when it is back: |r| may be answered
 * after this returns. */
void campaigns_diagnose(campaigns *cs, esim_api_request *r, const char *udid);

/* ======================================================================
 * Admin API (api_campaign.c)
 * ====================================================================== */

/* Adds the routes of campaigns, groups, tags, imports and diagnosis
 * (docs/campaigns.md) to |cs|'s service. What esim_service_add_route says. */
esim_err campaigns_add_routes(campaigns *cs, esim_error *err);

/* Answers |r| with the status that |rc| maps to (esim_api_status_for) and
 * |e|'s message, or esim_strerror(rc) when |e| has none; |field| (may be
 * NULL) names the request field at fault. */
void campaigns_api_fail(esim_api_request *r, esim_err rc, const char *field, const esim_error *e);

#endif
