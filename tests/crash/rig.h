/*
 * rig.h — the whole system as real processes on loopback, for the crash and
 * fault tests: the APNs mock, the service (SQLite store, a webhook to an
 * in-process receiver), the device simulator and the SM-DP+ simulator, each
 * started from the esim-mdm binary under test by the demo's supervisor
 * (cli/supervisor.c), each restartable on the same port and data after a
 * SIGKILL. A campaign over every device is then followed, and the end state
 * checked against the service's API, the SM-DP+'s orders and what the
 * webhook receiver got.
 */
#ifndef ESIM_TEST_CRASH_RIG_H
#define ESIM_TEST_CRASH_RIG_H

#include <limits.h>
#include <stdbool.h>

#include <jansson.h>

#include "cli/http_client.h"
#include "cli/supervisor.h"
#include "crash/hook_sink.h"

typedef struct {
    char udid[65];
    char eid[40];
    char iccid[24];
    char serial[64];
} rig_dev;

typedef struct {
    char dir[PATH_MAX];
    unsigned devices;
    supervisor sup;
    hook_sink *hooks;
    int apns_tls, apns_delivery, svc_port, sim_port, smdp_port;
    char apns_extra[8][64]; /* extra options for the APNs mock (faults) */
    int n_apns_extra;
    chttp api, sim, smdp;
    rig_dev *devs;
    char campaign[64];
    unsigned restarts[4]; /* per part, indexed by rig_part */
    const char *valgrind; /* non-NULL: the service runs under this valgrind */
    /* Several instances (set before rig_start): |store| is the --store spec
     * they share (NULL: SQLite in the data directory), |instances| 1 or 2;
     * the second is "service2" on |svc2_port|, devsim sends each request to
     * the next instance, and |api| is the first instance's API until
     * rig_kill_first_instance. */
    const char *store;
    int instances;
    int svc2_port;
    chttp api2;
    char valgrind_log[PATH_MAX + 32];
} rig;

typedef enum { RIG_SERVICE, RIG_DEVSIM, RIG_SMDP, RIG_APNS } rig_part;

/* Everything up to a running campaign's start: parts started, devices
 * enrolled, manifest and activation codes imported. False with a message. */
bool rig_start(rig *r, unsigned devices);
/* Posts the campaign (profile, refresh, verify over every device). */
bool rig_create_campaign(rig *r);
/* The campaign's summary (NULL while the service is down). */
json_t *rig_campaign_summary(rig *r);
/* SIGKILL, then the same part again on the same port and data; waits until
 * it serves. Or the two halves apart (a part down for a while). */
bool rig_kill_restart(rig *r, rig_part part);
bool rig_kill(rig *r, rig_part part);
/* SIGKILLs the first instance for good; |api| is the second's from then on. */
bool rig_kill_first_instance(rig *r);
bool rig_restart(rig *r, rig_part part);
/* Devices in a final state in a campaign summary. */
long rig_finals(const json_t *summary);
/* Polls the campaign until it finished (true) or |max_s| passed. */
bool rig_wait_finished(rig *r, double max_s);
/* Waits up to |max_s| for the campaign to finish, killing |part| whenever
 * the number of devices in a final state passes the next of |n_kills|
 * thresholds spread over the campaign (none when n_kills is 0). Sets
 * *kills_during to the kills made while the campaign was still running. */
bool rig_follow(rig *r, double max_s, int n_kills, rig_part part, int *kills_during);
/* The end-state checks; prints what it found, false on any violation. */
typedef struct {
    long verified, events_checked, results, webhooks, webhook_dups_same_id, webhook_lost;
    long downloads_max, orders_installed, download_retries;
    long resent; /* (device, command) pairs the ledger shows sent more than once */
} rig_report;
bool rig_check(rig *r, rig_report *rep);
/* SIGTERM to the service and a wait (up to |max_s|) for its exit status:
 * under valgrind, the leak check runs then. -1 when it did not end. */
int rig_stop_service(rig *r, double max_s);
void rig_stop(rig *r);

#endif
