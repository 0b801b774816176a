/*
 * campaign.h — eSIM roll-out campaigns, the layer above the MDM service
 * (campaign/): its one public header. A program that runs the service wires
 * campaigns in with esim_campaigns_attach; the admin API of docs/campaigns.md
 * is how campaigns are driven from then on. The engine and the import
 * parsers behind it are private (campaign/campaign_engine.h).
 */
#ifndef ESIM_CAMPAIGN_CAMPAIGN_H
#define ESIM_CAMPAIGN_CAMPAIGN_H

#include "core/esim.h"
#include "service/service.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ======================================================================
 * Campaigns in a service
 * ====================================================================== */

/*
 * Attaches campaigns to |svc|, as the program's composition root does
 * (`esim-mdm serve`, the test harnesses): imports <data_dir>/campaigns.db if
 * an earlier version left one (data_dir NULL or "": the working directory),
 * restores the campaigns the service's store holds (campaign records live
 * there, with its durability), and registers through the service's hooks: a result hook, the
 * admin API routes of docs/campaigns.md, the /metrics lines and a close
 * hook. From then on the service owns the campaigns: esim_service_free
 * writes what changed and frees them. Call after esim_service_new and
 * before the loop runs. On failure nothing stays registered and:
 *   ESIM_EINVAL   NULL service;  ESIM_ESTORE  the store failed, or an old
 *   campaigns.db cannot be read (nothing imported);  ESIM_EIO  imported, but
 *   it cannot be renamed;  ESIM_ENOMEM;  ESIM_ETOOBIG  the service has no
 *   room for another hook.
 */
ESIM_EXTERN esim_err esim_campaigns_attach(esim_service *svc, const char *data_dir,
                                           esim_error *err);

#ifdef __cplusplus
}
#endif
#endif
