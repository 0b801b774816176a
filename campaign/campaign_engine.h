/*
 * campaign_engine.h — private to campaign/ (not installed): the import files
 * that tell the service which EID (and ICCID) each device should end up
 * with, and the campaign engine, a state machine per device that the
 * service drives with results, push outcomes and a periodic tick. The engine
 * does no I/O itself: it asks its campaign_io to queue commands and wake
 * devices, and reports which device records changed so the caller writes
 * them in one transaction per batch.
 *
 * Ownership: every campaign_X_new() has a campaign_X_free() that accepts
 * NULL. Strings passed in are copied. Errors: esim_err plus a sentence in
 * |err| (may be NULL), never printed.
 */
#ifndef ESIM_CAMPAIGN_CAMPAIGN_ENGINE_H
#define ESIM_CAMPAIGN_CAMPAIGN_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "campaign/campaign.h"
#include "core/esim.h"
#include "plist/esim_plist.h"
#include "restrictions/restrictions.h"

/* ======================================================================
 * Import files (the offline workflow)
 * ====================================================================== */

/* Largest import file accepted, and most rows. */
#define CAMPAIGN_IMPORT_MAX_BYTES (64u * 1024u * 1024u)
#define CAMPAIGN_IMPORT_MAX_ROWS 2000000u
/* Bad lines described one by one; beyond this they are only counted. */
#define CAMPAIGN_IMPORT_MAX_BAD 1000u

/* One row of an OEM or reseller manifest: a device's serial number and the
 * EID of its eUICC. */
typedef struct {
    unsigned line;
    char serial[65];
    char eid[ESIM_EID_LEN + 1];
} campaign_eid_row;

/* One row of an activation-code file: EID,LPA:1$<SM-DP+>$<MatchingID>[,ICCID]. */
typedef struct {
    unsigned line;
    char eid[ESIM_EID_LEN + 1];
    char code[600];         /* the activation code as given */
    char smdp_address[256]; /* parsed from |code| */
    char matching_id[256];  /* parsed from |code|; may be empty */
    char iccid[21];         /* optional third column; "" when absent */
} campaign_code_row;

typedef struct {
    unsigned line;
    char reason[240];
} campaign_bad_line;

/* A parsed import file: good rows, and every bad line with its number. */
typedef struct {
    campaign_eid_row *eids; /* eid manifests */
    size_t n_eids;
    campaign_code_row *codes; /* activation-code files */
    size_t n_codes;
    campaign_bad_line *bad; /* at most CAMPAIGN_IMPORT_MAX_BAD described */
    size_t n_bad;           /* described */
    size_t n_bad_total;     /* all bad lines, described or not */
    size_t n_skipped;       /* blank lines, '#' comments, the header */
} campaign_import;

void campaign_import_free(campaign_import *imp); /* NULL ok; leaves it zeroed */

/*
 * Parses an EID manifest: CSV lines "serial,EID". Blank lines and lines
 * starting '#' are skipped; a first line naming the columns (it contains
 * "serial" and "eid", any case, any order, other columns allowed) sets
 * which columns are read; without one the first two columns are used.
 * Fields are trimmed and may be double-quoted; CRLF is accepted. A bad
 * row (missing column, empty or over-long serial, invalid EID, a serial or
 * EID already seen on an earlier line) goes to |out|->bad with its line
 * number and the reason; every other row is kept. On success *out is
 * overwritten, not freed first (the caller frees it with
 * campaign_import_free) and ESIM_OK is
 * returned even when some lines were bad. Otherwise *out is untouched and:
 *   ESIM_EINVAL   NULL text/out, or the text holds a NUL byte;
 *   ESIM_ETOOBIG  over CAMPAIGN_IMPORT_MAX_BYTES or _MAX_ROWS;
 *   ESIM_ENOMEM   out of memory.
 */
esim_err campaign_import_parse_eids(const char *text, size_t len, campaign_import *out,
                                    esim_error *err);

/*
 * Parses an activation-code file: lines "EID,LPA:1$<SM-DP+>$<MatchingID>"
 * with an optional third column, the ICCID the order will install. Same
 * rules for blank lines, comments, quotes, line endings and errors as
 * campaign_import_parse_eids; a row is bad when the EID or ICCID is invalid,
 * the activation code does not parse (esim_activation_code_parse's reason)
 * or the EID already appeared on an earlier line.
 */
esim_err campaign_import_parse_codes(const char *text, size_t len, campaign_import *out,
                                     esim_error *err);

/* ======================================================================
 * The engine
 * ====================================================================== */

/* What a campaign does to each device, in this order; a campaign runs any
 * non-empty subset (a verify-only campaign checks eSIMs already out). The
 * steps are platform-neutral; a platform adapter (campaign/platform.h) says
 * how its devices are told (Apple's command in brackets). */
typedef enum {
    CAMPAIGN_STEP_PROFILE = 0,    /* apply the eSIM policy (InstallProfile: restrictions) */
    CAMPAIGN_STEP_REFRESH = 1,    /* install the eSIM from the SM-DP+ (RefreshCellularPlans) */
    CAMPAIGN_STEP_VERIFY = 2,     /* read which eSIMs the device has (DeviceInformation
                                     ServiceSubscriptions) and compare with the expected ones */
    CAMPAIGN_STEP_ERASE_KEEP = 3, /* erase the device, keeping the eSIM (EraseDevice
                                     PreserveDataPlan=true) */
    CAMPAIGN_STEP_ESIM_WIPE = 4,  /* erase the device and reset the eUICC (EraseDevice) */
    CAMPAIGN_STEP_COUNT = 5
} campaign_step;

const char *campaign_step_name(campaign_step s); /* "profile", "refresh", ...; never NULL */
esim_err campaign_step_parse(const char *word, campaign_step *out, esim_error *err);

/* Where one device stands. */
typedef enum {
    CDEV_STAGED = 0, /* distribution "none": nothing will be sent */
    CDEV_PENDING,    /* waiting for a push slot (the pushes-per-second ceiling) */
    CDEV_ACTIVE,     /* the command of |step| is queued; waiting for its answer */
    CDEV_RETRY_WAIT, /* NotNow or busy (36003): waiting out the back-off */
    CDEV_VERIFIED,   /* the device reported the expected EID (and ICCID) */
    CDEV_DONE,       /* every step finished (campaigns that do not verify, or after an erase) */
    CDEV_UNVERIFIED, /* refresh acknowledged, but no matching subscription was reported */
    CDEV_FAILED,     /* a final error; see the reason */
    CDEV_TIMED_OUT,  /* no final answer before the campaign's expiry */
    CDEV_CANCELED,   /* the campaign was canceled before the device finished */
    CDEV_STATE_COUNT
} campaign_dev_state;

/* "staged", "pending", "active", "retry_wait", "verified", "done",
 * "unverified", "failed", "timed_out", "canceled"; never NULL. */
const char *campaign_dev_state_name(campaign_dev_state s);
esim_err campaign_dev_state_parse(const char *word, campaign_dev_state *out, esim_error *err);
bool campaign_dev_state_final(campaign_dev_state s);

typedef enum {
    CAMPAIGN_RUNNING = 0,
    CAMPAIGN_STAGED, /* distribution "none" */
    CAMPAIGN_PAUSED,
    CAMPAIGN_CANCELED,
    CAMPAIGN_FINISHED, /* every device is in a final state */
} campaign_state;

const char *campaign_state_name(campaign_state s); /* "running", ... */

/* Tunables; campaign_settings_init() fills the defaults named here. */
typedef struct {
    double pushes_per_second; /* ceiling on new pushes (default 1000, > 0) */
    int64_t repush_after_ms;  /* push again a device silent this long (default 4 h) */
    int64_t expiry_ms;        /* after this a device not finished is timed_out (default 7 days) */
    int64_t retry_base_ms;    /* first back-off after NotNow / 36003 (default 60 s) */
    int64_t retry_max_ms;     /* back-off cap (default 1 h) */
    unsigned max_retries;     /* NotNow/busy answers tolerated per step (default 10) */
    unsigned verify_attempts; /* DeviceInformation tries before unverified (default 3) */
    unsigned max_in_flight;   /* devices with a command outstanding before new ones wait
                                 (default 0: no limit) */
} campaign_settings;

void campaign_settings_init(campaign_settings *s);

/* One device as the campaign starts. */
typedef struct {
    const char *udid;           /* required */
    const char *expected_eid;   /* NULL/"": unknown (then it cannot be verified) */
    const char *expected_iccid; /* NULL/"": unknown (EID alone is checked) */
    bool staged;                /* excluded by the distribution: never sent */
    bool esim_installed;        /* the service already verified this ICCID on it:
                                   never ask for a second download */
    uint8_t platform;           /* the caller's: which platform adapter speaks to it
                                   (campaign/platform.h); kept, never read */
} campaign_target;

/* The per-device record. 120-odd bytes plus the reason when one is set. */
typedef struct {
    char udid[65];
    char eid[ESIM_EID_LEN + 1];
    char iccid[21];
    uint8_t state;   /* campaign_dev_state */
    uint8_t step;    /* campaign_step in progress (or last) */
    uint8_t retries; /* NotNow / busy answers for this step */
    uint8_t verify_tries;
    uint8_t esim_installed : 1; /* never ask this device for a second download */
    uint8_t refresh_acked : 1;  /* its RefreshCellularPlans was acknowledged */
    uint8_t need_queue : 1;     /* pending: the step's command must be queued (again) */
    uint8_t in_ready : 1;       /* sits in the push FIFO */
    uint8_t dirty : 1;          /* changed since campaign_take_dirty */
    uint8_t in_again : 1;       /* sits in the re-push FIFO */
    uint8_t install_error : 1;  /* its refresh answered an error (reason holds it): the
                                   verification that follows decides, verified or failed */
    uint8_t store_wait : 1;     /* pending because the store could not queue its command
                                   (reason says so until it is queued) */
    uint16_t pushes;            /* pushes sent for the current command */
    uint16_t gen;               /* timer generation: a stale heap entry has an older one */
    uint32_t not_now;           /* NotNow answers over the whole campaign */
    int64_t changed_ms;         /* last state change */
    int64_t next_ms;            /* next timer: re-push or end of back-off (0: none) */
    int64_t deadline_ms;        /* expiry: timed_out after this */
    int64_t last_push_ms;       /* when the last push went out (0: never) */
    uint32_t cmd;               /* the caller's reference to the queued command (campaign_io) */
    uint8_t push_state;         /* the caller's code for the last push's fate */
    uint8_t platform;           /* the caller's: campaign_target.platform */
    char *reason; /* malloc'd sentence for failed/unverified/timed_out, a note for some
                     verified/done devices, the refresh's error while verifying after it */
} campaign_dev;

typedef struct campaign campaign;

/* What the engine asks of the service. Every call may fail. A push is
 * retried. A queue that failed with ESIM_ESTORE (the store could not take
 * it now: a full disk, the database away; nothing was kept) is tried again
 * after the retry back-off, the device pending meanwhile, until the
 * campaign's expiry; any other failure marks the device failed with |err|'s
 * sentence. */
typedef struct {
    void *arg;
    /* Queue the command of |step| for device |dev| (index) of |c|. */
    esim_err (*queue)(void *arg, campaign *c, size_t dev, campaign_step step, esim_error *err);
    /* Wake the device with an APNs push. */
    esim_err (*push)(void *arg, campaign *c, size_t dev, esim_error *err);
    /* True when results reach the engine after the device already had its
     * reply (the service's result hook): the next step's command then needs
     * a push of its own. False: the device is still connected and gets it
     * in the same exchange. */
    bool push_after_answer;
    /* May be NULL. True when the device talked to the service after
     * |since_ms|: it got its command and is working on it (a download takes
     * a while), so a re-push would only add load. */
    bool (*seen_since)(void *arg, campaign *c, size_t dev, int64_t since_ms);
    /* May be NULL (every push wakes its device). False when a push of
     * device |dev| wakes nothing because the device polls (IoT eUICCs poll
     * the eIM): the engine still times it as a push but does not count it
     * in campaign_pushes(). */
    bool (*wakes)(void *arg, campaign *c, size_t dev);
    /* May be NULL. The same question asked without waiting for the answer
     * (used instead of seen_since when set: the caller reads the store off
     * the loop): the engine keeps the device's timer at the next re-push
     * delay, as for a device seen, and the caller gives the answer later
     * with campaign_seen_answer(c, dev, |token|, ...). */
    void (*ask_seen)(void *arg, campaign *c, size_t dev, int64_t since_ms, uint32_t token);
} campaign_io;

/* A device's answer to a step, as a platform adapter read it
 * (campaign/platform.h): the engine knows no platform's commands or codes. */
typedef struct {
    esim_status status;            /* Acknowledged (done), Error, CommandFormatError, NotNow */
    int64_t error_code;            /* the platform's error code, 0 when none */
    const char *error_text;        /* a sentence for it, or NULL */
    bool busy;                     /* the error means "not now, try again" (Apple 36003):
                                      retried after a back-off instead of failing */
    const esim_subscription *subs; /* verify step: the eSIMs the device reports */
    size_t n_subs;
} campaign_result;

/* The campaign as an admin described it (already validated by the API). */
typedef struct {
    const char *id;   /* NULL: a fresh UUID */
    const char *name; /* may be NULL */
    bool steps[CAMPAIGN_STEP_COUNT];
    esim_policy policy;   /* for CAMPAIGN_STEP_PROFILE */
    const char *smdp_url; /* for CAMPAIGN_STEP_REFRESH */
    campaign_settings settings;
    bool staged; /* distribution "none" */
} campaign_spec;

/*
 * A new campaign over |targets| (n >= 1, UDIDs distinct) starting at
 * |now_ms|. Devices not staged start pending. *out is the caller's
 * (campaign_free). ESIM_EINVAL (|err| says which) for no step, REFRESH
 * without smdp_url, PROFILE with an empty policy, bad settings, a bad or
 * repeated UDID, an invalid expected EID/ICCID; ESIM_ENOMEM.
 */
esim_err campaign_new(const campaign_spec *spec, const campaign_target *targets, size_t n,
                      int64_t now_ms, campaign **out, esim_error *err);
void campaign_free(campaign *c);

const char *campaign_id(const campaign *c);
const char *campaign_name(const campaign *c);
campaign_state campaign_get_state(const campaign *c);
const campaign_spec *campaign_get_spec(const campaign *c); /* strings owned by |c| */
int64_t campaign_created_ms(const campaign *c);
size_t campaign_device_count(const campaign *c);
const campaign_dev *campaign_device_at(const campaign *c, size_t i);
/* Index of |udid| or -1 (a hash lookup). */
long campaign_find_device(const campaign *c, const char *udid);
/* Number of devices in each state. */
void campaign_counts(const campaign *c, size_t counts[CDEV_STATE_COUNT]);
/* Devices whose refresh was acknowledged (an acknowledged refresh is not an
 * installed eSIM: compare with counts[CDEV_VERIFIED]). */
size_t campaign_refresh_acked(const campaign *c);
/* Pushes sent (wake-ups: not the polled devices' nudges, campaign_io.wakes),
 * first pushes and re-pushes; commands queued. */
uint64_t campaign_pushes(const campaign *c);
uint64_t campaign_commands(const campaign *c);
/* Sets both (a campaign restored from the store goes on from the totals
 * its earlier driver wrote). */
void campaign_set_totals(campaign *c, uint64_t pushes, uint64_t commands);

/*
 * Advances time to |now_ms|: refills the push allowance (at most a tenth of
 * a second's worth accumulates), handles due back-offs, re-pushes and
 * expiries, then starts pending devices within the allowance. Costs
 * O(work done), never a scan of all devices. Does nothing unless running.
 * Returns the number of devices that changed.
 */
size_t campaign_tick(campaign *c, int64_t now_ms, const campaign_io *io);

/*
 * Feeds the answer of device |dev| to the command of |step|. A result for a
 * step the device is not waiting on (a late duplicate) is ignored
 * (ESIM_ESTATE). The next step's command is queued at once without a push:
 * the device is connected and gets it in the same exchange. ESIM_EINVAL for
 * a bad index.
 */
esim_err campaign_on_result(campaign *c, size_t dev, campaign_step step, const campaign_result *r,
                            int64_t now_ms, const campaign_io *io);

/* The answer to io->ask_seen(.., dev, since, |token|): whether device
 * |dev| talked to the service after |since|. Not seen, and no longer in
 * its line, it is pushed again (at the next tick); seen, nothing changes.
 * An answer for a device whose timer or state changed since it was asked
 * (|token| is no longer its own), or while the campaign is not running,
 * changes nothing. */
void campaign_seen_answer(campaign *c, size_t dev, uint32_t token, bool seen, int64_t now_ms);

/* The push for |dev| could not be delivered to APNs for good (|why|, e.g.
 * "the push token is dead (410 Unregistered)"): the reason is kept; the
 * device keeps waiting until a check-in or its expiry. */
void campaign_on_push_failed(campaign *c, size_t dev, const char *why, int64_t now_ms);

/* The caller could not carry out a queue or push it accepted earlier:
 * |dev| becomes failed with |why| (unless already final). */
void campaign_fail_device(campaign *c, size_t dev, const char *why, int64_t now_ms);

/* The store could not keep a command the caller accepted for |dev| earlier
 * (its unit failed: nothing of it was kept): the device is pending again,
 * with |why| as its note, and its command is queued again after the first
 * retry back-off, until the campaign's expiry (unless already final). */
void campaign_queue_lost(campaign *c, size_t dev, const char *why, int64_t now_ms);

/* Sets the caller's fields of a device record (campaign_dev.cmd and
 * push_state) and marks it changed. */
void campaign_set_cmd(campaign *c, size_t dev, uint32_t cmd);
void campaign_set_push_state(campaign *c, size_t dev, uint8_t push_state);

/* pause: no new pushes or commands; answers still count. resume: pending
 * and waiting devices carry on (a staged campaign starts; expiry deadlines
 * are kept). cancel: every unfinished device becomes canceled (the caller
 * removes their queued commands). ESIM_ESTATE when the transition makes no
 * sense (resume a running campaign, anything after cancel or finish). */
esim_err campaign_pause(campaign *c, int64_t now_ms, esim_error *err);
esim_err campaign_resume(campaign *c, int64_t now_ms, esim_error *err);
esim_err campaign_cancel(campaign *c, int64_t now_ms, esim_error *err);
/* The rule those three apply, for a campaign known only by its stored
 * state (campaign |id| in state |from|): the state |to| that |verb|
 * ("pause", "resume", "cancel") takes it to, or ESIM_ESTATE worded as they
 * word it (ESIM_EINVAL for another verb). */
esim_err campaign_transition(const char *id, campaign_state from, const char *verb,
                             campaign_state *to, esim_error *err);

/* Indices of devices changed since the last call (each once), for the
 * caller to persist; *n is set. The array is owned by |c| and valid until
 * the next engine call. */
const size_t *campaign_take_dirty(campaign *c, size_t *n);

/* Bytes the campaign holds in memory (records, index, timers, queues,
 * reasons): what a campaign costs the service per device. */
size_t campaign_memory(const campaign *c);

/* Marks every device changed (after the caller failed to write a batch). */
void campaign_mark_all_dirty(campaign *c);

/*
 * Rebuilds a campaign from stored records (the service restarting): the
 * records are copied, timers re-armed from their deadlines, pending devices
 * queued again. Same errors as campaign_new.
 */
esim_err campaign_restore(const campaign_spec *spec, campaign_state state, int64_t created_ms,
                          const campaign_dev *devs, size_t n, int64_t now_ms, campaign **out,
                          esim_error *err);

/* True when |subs| has a subscription with |eid| (and |iccid| when not empty). */
bool campaign_subscriptions_match(const esim_subscription *subs, size_t n, const char *eid,
                                  const char *iccid);

#endif
