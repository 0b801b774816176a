/*
 * platform.h — the platform seam of campaigns (private to campaign/).
 *
 * The engine (campaign_engine.c) speaks in platform-neutral steps: "apply
 * the eSIM policy", "install the eSIM from server S, expecting EID e / ICCID
 * i", "verify", "erase keeping the eSIM", "reset the eUICC". A platform
 * adapter turns a step into the command its devices understand, hands it to
 * the service, and reads the answer back into a campaign_result (status,
 * error, the eSIMs the device reports) plus what the answer teaches about
 * the device. The glue (campaign.c) picks the adapter per device, by the
 * platform recorded in its campaign record (campaign_dev.platform).
 *
 * Apple (platform_apple.c: MDM commands as plists, one for a whole batch)
 * and Windows (platform_windows.c: eUICCs CSP SyncML; its commands name the
 * device's eUICC by EID, so one command per device, and its verification
 * reads the profile's State from a Get's Results) and IoT (platform_iot.c:
 * eIM packages for one eUICC each; its verification lists the profiles).
 */
#ifndef ESIM_CAMPAIGN_PLATFORM_H
#define ESIM_CAMPAIGN_PLATFORM_H

#include "campaign/campaign_engine.h"
#include "service/service.h"

/* The platforms campaigns can drive; campaign_dev.platform holds one. */
typedef enum {
    CAMPAIGN_PLATFORM_APPLE = 0,   /* iPhone, iPad: Apple MDM over APNs */
    CAMPAIGN_PLATFORM_WINDOWS = 1, /* Windows PCs: OMA-DM, the eUICCs CSP, WNS */
    CAMPAIGN_PLATFORM_IOT = 2,     /* IoT eUICCs: the service's eIM (SGP.32), polled */
    CAMPAIGN_PLATFORM_COUNT
} campaign_platform_id;

/* One step for one device, in platform-neutral words. Strings are
 * borrowed for the call. */
typedef struct {
    campaign_step step;
    /* CAMPAIGN_STEP_PROFILE: the eSIM policy to apply. */
    const esim_policy *policy;
    /* CAMPAIGN_STEP_REFRESH: the server S the eSIM comes from. */
    const char *smdp_url;
    /* REFRESH and VERIFY: what the device should end up with ("" unknown).
     * NULL for a command shared by many devices (per_device_commands false). */
    const char *eid, *iccid;
} campaign_order;

/* A command ready to queue: the body as the service takes it, and the
 * identifier the device's answer will carry. */
typedef struct {
    esim_buf body;
    char uuid[ESIM_UUID_LEN + 1];
    char kind[64]; /* what it is called on the wire ("RefreshCellularPlans") */
} campaign_command;

void campaign_command_free(campaign_command *cmd); /* NULL ok; leaves it zeroed */

/* What a device's answer said, as the engine and the glue need it. */
typedef struct {
    campaign_result result;  /* for campaign_on_result; strings point into the answer or |subs| */
    esim_subscription *subs; /* the eSIMs the device reports (malloc'd), or NULL */
    size_t n_subs;
    /* Facts the answer taught (-1 / "" when it did not say). */
    int supervised;
    char os_version[32];
    char error_text[700]; /* what result.error_text points at when set */
} campaign_reading;

void campaign_reading_free(campaign_reading *r); /* frees subs; leaves it zeroed */

typedef struct campaign_platform {
    const char *name; /* "apple" */
    /* False: one command (one identifier) carries a step to every device of
     * a batch. True: the command names the device (its eUICC, its profile),
     * so each device gets its own. */
    bool per_device_commands;
    /* What every command of a campaign shares, prepared once (Apple: the
     * restrictions profile). *ctx is released with release(). */
    esim_err (*prepare)(const campaign_spec *spec, void **ctx, esim_error *err);
    void (*release)(void *ctx);
    size_t (*memory)(const void *ctx); /* bytes |ctx| holds */
    /* The command for |o|, identified by |uuid| (NULL: a fresh one). */
    esim_err (*build)(void *ctx, const campaign_order *o, const char *uuid, campaign_command *out,
                      esim_error *err);
    /* Queues |cmd| for the |n| devices on |st| (the service's store, or a
     * store job's), all or nothing, through the service's store half
     * (esim_service_enqueue_on and its kin, with their errors); nothing
     * else: the glue calls esim_service_enqueued once it is committed. */
    esim_err (*enqueue)(const esim_service *svc, store *st, const campaign_command *cmd,
                        const char *const *udids, size_t n, esim_error *err);
    /* Reads the answer |r| to the command of |step| into |out| (zeroed
     * first; campaign_reading_free after). |step| is CAMPAIGN_STEP_COUNT for
     * a command that is no campaign's: only the facts are read. ESIM_EINVAL
     * when the answer is not one this platform gives. */
    esim_err (*read)(campaign_step step, const esim_service_result *r, campaign_reading *out);
    /* Reads the answer the store recorded for the queue entry |q| (answered:
     * acknowledged, error or format_error) as read() reads the answer
     * itself: how the instance driving a campaign replays an answer another
     * instance received, or one recorded before a restart. The service keeps
     * each platform's answer its own way (Apple: the result plist; Windows:
     * the items of the SyncML Status and Results; IoT: the eIM's result in
     * words), so each adapter reads its own. ESIM_ENOTFOUND when the entry
     * holds no answer this platform can read. */
    esim_err (*read_recorded)(store *st, campaign_step step, const store_queue_entry *q,
                              campaign_reading *out);
} campaign_platform;

/* The adapter for |id|; NULL for an unknown one. */
const campaign_platform *campaign_platform_get(uint8_t id);

/* Which platform a device speaks, by the platform column of its row
 * ("windows", "iot"; anything else, and NULL, is an Apple MDM client). */
campaign_platform_id campaign_platform_named(const char *platform);

/* Which platform's adapter reads |r|: the service's results are Apple MDM
 * messages (r->msg) today. */
campaign_platform_id campaign_platform_of_result(const esim_service_result *r);

/* The adapters (platform_apple.c, platform_windows.c, platform_iot.c); the registry above
 * is platform.c. */
extern const campaign_platform campaign_platform_apple;
extern const campaign_platform campaign_platform_windows;
extern const campaign_platform campaign_platform_iot;

/* The host (and port) of a URL: "https://smdp.example.com/x" ->
 * "smdp.example.com", "https://127.0.0.1:8443" -> "127.0.0.1:8443" (the port
 * is kept, as the device connects to it); "" when it does not fit |out_len|
 * or |url| is NULL. */
void campaign_platform_host_of(const char *url, char *out, size_t out_len);

/* What a Windows PC's readings of the eUICCs CSP say of an eSIM operation:
 * the expected profile's State (1 installing, 2 installed, 3 deleting,
 * 4 error) and its SM-DP+'s DiscoveryState (1 requested, 2 executing,
 * 3 completed, 4 failed); any other value (0 or -1: not read) reads as
 * nothing. A State read overrules the discovery: a profile installing or
 * installed is not failed by a discovery that failed. */
typedef enum {
    CAMPAIGN_WINDOWS_SETTLED,          /* installed, or nothing under way or failed */
    CAMPAIGN_WINDOWS_BUSY,             /* State 1 or 3, or discovery still running: later */
    CAMPAIGN_WINDOWS_PROFILE_ERROR,    /* State 4: ErrorDetail says why */
    CAMPAIGN_WINDOWS_DISCOVERY_FAILED, /* DiscoveryState 4 and no profile installed */
} campaign_windows_verdict;

/* The verdict of a State and a DiscoveryState read together (the campaign's
 * verification, platform_windows.c, and the diagnosis's words for it,
 * campaign_diagnose.c). */
campaign_windows_verdict campaign_windows_verdict_of(long state, long discovery_state);

#endif
