/*
 * cmd_demo.c — `esim-mdm demo`: the product's main job on one machine. It
 * starts the APNs mock, the WNS mock, the service on SQLite in a temporary
 * directory, N simulated devices (iPhones, a fifth by default Windows 11
 * PCs, a tenth IoT devices polling the service's eIM) and the SM-DP+
 * simulator as child processes of this binary on loopback, drives them only
 * through their public APIs (as an admin would), and stops everything it
 * started whatever happens.
 */
#include <errno.h>
#include <stdarg.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/campaign_http.h"
#include "cli/cli.h"
#include "cli/options.h"
#include "cli/supervisor.h"
#include "plist/esim_plist.h"
#include "restrictions/restrictions.h"

static const char demo_help[] =
    "usage: esim-mdm demo [--devices N] [--json] [options]\n"
    "       esim-mdm demo --sample\n"
    "\n"
    "Runs the whole system on this machine, on loopback: the MDM service on an\n"
    "embedded SQLite store in a temporary directory, the APNs mock, the WNS mock,\n"
    "the SM-DP+ simulator with one order per device, and N simulated devices: iPhones\n"
    "(a realistic mix: some unsupervised, some on an old iOS, a few answering NotNow,\n"
    "a few offline for a while) and, a fifth of them by default, Windows 11 PCs\n"
    "managed over OMA-DM (TLS with client certificates, woken through WNS; a few\n"
    "whose profile the operator did not release, or never ordered) and, a tenth by\n"
    "default, IoT devices whose IPA polls the service's eIM (GSMA SGP.32). It enrols\n"
    "them, imports the OEM manifest and the activation codes, runs one campaign for\n"
    "the iPhones and PCs (restrictions profile / LocalUIEnabled, RefreshCellularPlans /\n"
    "DownloadServers, verification) with a progress bar and one for the IoT devices\n"
    "(download trigger by activation code, enable, list profiles), switches a few IoT\n"
    "devices to a second profile and back, then shows the erase that keeps the eSIM\n"
    "(EraseDevice PreserveDataPlan, re-enrolment, eSIM still verified) and the\n"
    "restrictions blocking a user's eSIM deletion and Quick Transfer. It ends with\n"
    "a summary table and one sample diagnosis, and stops everything it started.\n"
    "\n"
    "options:\n"
    "  --devices N              simulated devices (default 1000)\n"
    "  --json                   standard output is one JSON summary object (the\n"
    "                           story goes to standard error)\n"
    "  --pushes-per-second N    the campaign's push ceiling (default 5000)\n"
    "  --max-in-flight N        devices with a command outstanding at once (default 500;\n"
    "                           0: no limit)\n"
    "  --seed N                 the simulator's identities and misbehaviour (default 7)\n"
    "  --windows-share F        share of the devices that are Windows PCs (default 0.2;\n"
    "                           0: no PCs, and the service on plain HTTP)\n"
    "  --iot-share F            share of the devices that are IoT devices managed through\n"
    "                           the eIM (default 0.1; 0: none)\n"
    "  --quiet-mix              no NotNow, offline, busy, eSIM-less or unsupervised devices,\n"
    "                           no PC or IoT device made to fail\n"
    "  --no-inventory           skip the DeviceInformation inventory before the campaign\n"
    "                           (warnings then cannot know supervision)\n"
    "  --inventory-wait S       how long the inventory wakes iPhones (--max-in-flight at\n"
    "                           a time) before the campaign starts (default 15); the rest\n"
    "                           answer it in the campaign's first wake-up\n"
    "  --no-extras              skip the erase and user-action demonstrations\n"
    "  --timeout S              give up on the campaign after S seconds (default 300,\n"
    "                           or 20 ms per device in a fleet of more than 15,000)\n"
    "  --enrol-timeout S        give up on enrolment after S seconds (default: when no\n"
    "                           device enrolled in the last 120 s)\n"
    "  --keep DIR               work in DIR and keep it (default: a temporary directory,\n"
    "                           removed at the end)\n"
    "  --keep-running           after the story, keep every part running so the dashboard\n"
    "                           (its address is printed) can be looked at; Ctrl-C stops them\n"
    "  --store SPEC             the service's store instead of SQLite in that directory,\n"
    "                           e.g. postgres://user@host/db (an empty database, or one\n"
    "                           given to the demo: it enrols devices into it)\n"
    "  --instances N            N (1 or 2) instances of the service on the one --store\n"
    "                           (PostgreSQL only): the iPhones send each request, the PCs\n"
    "                           each OMA-DM session, to the next instance; the IoT\n"
    "                           devices poll the first; the campaigns are created on\n"
    "                           (driven by) the second and followed on the first\n"
    "                           (default 1)\n"
    "  --sim-processes N        device simulator processes (1 to 4; default 2), each\n"
    "                           simulating its own slice of the iPhones and PCs (the IoT\n"
    "                           devices in the first) with its own push channels, so the\n"
    "                           simulator's work spreads over the cores\n"
    "  --device-auth MODE       how iPhones prove who they are: signature (default: an\n"
    "                           Mdm-Signature on every message) or mtls (their identity\n"
    "                           certificate as TLS client certificate, the session resumed\n"
    "                           afterwards; the service then runs on TLS)\n"
    "  --sample                 only print the commands a campaign sends, and exit\n"
    "\n"
    "exit status: 0 every device that can be verified is verified, the PCs and IoT\n"
    "devices made to fail failed with their reason, the IoT profile switches were\n"
    "verified (and the extras worked), 1 not, or a part failed to start, 2 bad options.\n";

/* ---- the sample campaign (no processes) ------------------------------------------ */

#define DEMO_SMDP_URL "https://smdp.example.com"
/* The WNS client id the demo's service presents (a Store app's package SID). */
#define DEMO_WNS_CLIENT "ms-app://s-1-15-2-3141592653-demo"

static esim_policy demo_policy(void)
{
    esim_policy p = {0};
    p.allow_esim_modification = ESIM_TRI_FALSE;
    p.force_preserve_esim_on_erase = ESIM_TRI_TRUE;
    p.allow_esim_outgoing_transfers = ESIM_TRI_FALSE;
    return p;
}

static void print_step(const char *title, const esim_buf *body)
{
    printf("==== %s\n%.*s\n", title, (int)body->len, (const char *)body->data);
}

static int demo_print_sample(void)
{
    esim_error err = {{0}};
    esim_policy policy = demo_policy();
    esim_buf profile = {0};
    esim_cmd install = {0}, refresh = {0}, verify = {0}, erase = {0};
    int rc = CLI_EXIT_FAIL;
    static const char *const queries[] = {"ServiceSubscriptions"};
    esim_erase_opts erase_opts = {.preserve_data_plan = true};

    if (esim_policy_to_profile(&policy, NULL, NULL, &profile, &err) != ESIM_OK ||
        esim_cmd_install_profile(profile.data, profile.len, NULL, &install, &err) != ESIM_OK ||
        esim_cmd_refresh_plans(DEMO_SMDP_URL, NULL, &refresh, &err) != ESIM_OK ||
        esim_cmd_device_information(queries, 1, NULL, &verify, &err) != ESIM_OK ||
        esim_cmd_erase_device(&erase_opts, NULL, &erase, &err) != ESIM_OK) {
        fprintf(stderr, "esim-mdm demo: %s\n", err.msg);
        goto out;
    }
    printf("A sample eSIM campaign: the commands the service sends to each device, in order.\n\n");
    print_step("1. the eSIM restrictions profile (delivered inside InstallProfile)", &profile);
    print_step("   InstallProfile", &install.body);
    print_step("2. RefreshCellularPlans: the device asks the SM-DP+ for its profile",
               &refresh.body);
    print_step("3. verify: DeviceInformation ServiceSubscriptions (EID and ICCID must match)",
               &verify.body);
    print_step("4. optional: erase that keeps the eSIM (EraseDevice PreserveDataPlan)",
               &erase.body);
    rc = CLI_EXIT_OK;
out:
    esim_buf_free(&profile);
    esim_cmd_free(&install);
    esim_cmd_free(&refresh);
    esim_cmd_free(&verify);
    esim_cmd_free(&erase);
    return rc;
}

/* ---- the demo ---------------------------------------------------------------------------- */

/* Device simulator processes at most (--sim-processes), and by default:
 * the simulator's one thread bounded the campaign (docs/campaigns.md). */
#define DEMO_MAX_SIMS 4
#define DEMO_DEFAULT_SIMS 2
/* Their names under the supervisor (logs, port files); the JSON summary's
 * "devsim" figures are their sums. */
static const char *const sim_names[DEMO_MAX_SIMS] = {"devsim", "devsim2", "devsim3", "devsim4"};

typedef struct {
    char dir[PATH_MAX];
    bool keep, json, quiet_mix, inventory, extras, keep_running;
    const char *store;  /* --store, or NULL: SQLite in the service's data dir */
    unsigned instances; /* of the service, on the one --store (1 or 2) */
    bool mtls;          /* --device-auth mtls: iPhones show their identity in TLS */
    int svc2_port;      /* the second instance's */
    chttp api2;         /* the second instance's admin API */
    unsigned devices;
    double pps, timeout_s;  /* the campaign's expiry (--timeout; see demo_default_timeout_s) */
    double enrol_timeout_s; /* 0: as long as enrolment moves */
    unsigned max_in_flight;
    unsigned seed;
    double windows_share; /* of --devices; 0: iPhones only, plain HTTP */
    double iot_share;     /* of --devices; 0: no IoT devices, no eIM */
    unsigned windows_pcs; /* --devices x windows_share, rounded */
    unsigned iot_devices; /* --devices x iot_share, rounded (at most what PCs leave) */
    supervisor sup;       /* the child processes (cli/supervisor.h) */
    int apns_tls, apns_delivery, smdp_port, svc_port;
    unsigned sims;                /* device simulator processes (--sim-processes) */
    int sim_ports[DEMO_MAX_SIMS]; /* each one's status port */
    int wns_https, wns_delivery;  /* the WNS mock, when there are PCs */
    double inventory_s;           /* one DeviceInformation round to every device */
    long inventory_answered;
    long inventory_not_now;     /* NotNow answers meanwhile: not answers */
    double inventory_wait_s;    /* how long the inventory may wake iPhones */
    char (*inventory_cmds)[64]; /* its commands' UUIDs (20,000 iPhones each) */
    size_t n_inventory_cmds;
    long inventory_woken;          /* iPhones it pushed */
    long inventory_folded;         /* iPhones left for the campaign's first wake-up */
    long inventory_peak_in_flight; /* most pushed and not yet answered at once */
    long inventory_answered_all;   /* answers by the campaign's end */
    long service_rss_before_kb;    /* the service's memory just before the campaign */
    long service_rss_after_kb;     /* ... and when it finished */
    chttp api, smdp;
    chttp sim[DEMO_MAX_SIMS]; /* each simulator's status endpoint */
    FILE *out;                /* the human-readable story */
} demo;

static void say(demo *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(demo *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(d->out, fmt, ap);
    va_end(ap);
    fflush(d->out);
}

static const char *const child_names[] = {"apns-mock", "wns-mock", "service",
                                          "service2",  "devsim",   "smdp"};
#define N_CHILDREN (sizeof child_names / sizeof child_names[0])

/* What every part had used at one moment of the run, and the device
 * simulator's counts then: the phases of the run are the differences
 * between two marks (enrolment, the preparation, the inventory, the
 * campaign, what follows it). */
typedef struct {
    esim_proc_usage use[N_CHILDREN];        /* "devsim": every simulator process's, summed */
    bool ok[N_CHILDREN];                    /* the part's usage could be read */
    esim_proc_usage sim_use[DEMO_MAX_SIMS]; /* each simulator process's */
    long pushes, checkins, tls, pc_sessions, wns_pushes; /* the simulator's counts */
    long svc_conns;  /* the connections the service (each instance) admitted (/metrics) */
    long smdp_conns; /* the SM-DP+'s TLS handshakes (its summary) */
    long key_checks, key_tables; /* the service's signatures checked with a kept P-256 key,
                                    and the key tables it made for them (/metrics) */
} phase_mark;

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- waiting for the parts ----------------------------------------------------------------- */

/* The APNs and WNS mocks print {"listening":{...}} first: the ports named
 * |k1| and |k2|. */
static bool wait_mock_ports(demo *d, const char *name, const char *k1, int *p1, const char *k2,
                            int *p2)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s.log", d->dir, name);
    for (int64_t until = esim_mono_ms() + 30000; esim_mono_ms() < until;) {
        if (sup_stopping() || !sup_alive(&d->sup))
            return false;
        esim_buf b = {0};
        if (esim_read_file(path, 1 << 20, &b, NULL) == ESIM_OK && b.len) {
            const char *p = strstr((const char *)b.data, "{\"listening\"");
            const char *nl = p ? strchr(p, '\n') : NULL;
            json_t *j = nl ? json_loadb(p, (size_t)(nl - p), 0, NULL) : NULL;
            json_t *l = json_object_get(j, "listening");
            *p1 = (int)json_integer_value(json_object_get(l, k1));
            *p2 = (int)json_integer_value(json_object_get(l, k2));
            json_decref(j);
        }
        esim_buf_free(&b);
        if (*p1 > 0 && *p2 > 0)
            return true;
        sup_sleep_ms(20);
    }
    fprintf(stderr, "esim-mdm demo: the %s did not start within 30 s\n", name);
    sup_show_log_tail(&d->sup, name);
    return false;
}

/* One call that must answer |want|; prints why not. *out may be NULL. */
static bool call(demo *d, chttp *c, const char *method, const char *path, const char *ctype,
                 const char *body, size_t len, long want, json_t **out)
{
    long status = 0;
    json_t *r = NULL;
    esim_error e = {{0}};
    if (chttp_call(c, method, path, ctype, body, body ? len : 0, &status, &r, &e) != ESIM_OK ||
        status != want) {
        if (!sup_stopping())
            fprintf(stderr, "esim-mdm demo: %s %s: %s\n", method, path,
                    e.msg[0] ? e.msg : chttp_error_message(r));
        json_decref(r);
        if (out)
            *out = NULL;
        (void)d;
        return false;
    }
    if (out)
        *out = r;
    else
        json_decref(r);
    return true;
}

static bool post_json(demo *d, chttp *c, const char *path, json_t *body, long want, json_t **out)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    bool ok = text && call(d, c, "POST", path, NULL, text, strlen(text), want, out);
    free(text);
    return ok;
}

static long jint(const json_t *o, const char *k)
{
    return (long)json_integer_value(json_object_get(o, k));
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* Adds |from|'s counts into |into|: integers summed (but a "status", kept
 * from the first), objects merged the same way, anything else kept from
 * the first that has it. */
static void merge_counts(json_t *into, const json_t *from)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)from, k, v)
    {
        json_t *have = json_object_get(into, k);
        if (!have)
            json_object_set(into, k, v);
        else if (json_is_integer(have) && json_is_integer(v) && strcmp(k, "status") != 0)
            json_object_set_new(into, k,
                                json_integer(json_integer_value(have) + json_integer_value(v)));
        else if (json_is_object(have) && json_is_object(v))
            merge_counts(have, v);
    }
}

/* GET /stats of every simulator process, their counts summed (the fleet's
 * as one simulator of it would count them). False, with a message, when
 * one does not answer. */
static bool sim_stats(demo *d, json_t **out)
{
    json_t *all = NULL;
    for (unsigned i = 0; i < d->sims; i++) {
        json_t *s = NULL;
        if (!call(d, &d->sim[i], "GET", "/stats", NULL, NULL, 0, 200, &s)) {
            json_decref(all);
            *out = NULL;
            return false;
        }
        if (!all)
            all = s;
        else {
            merge_counts(all, s);
            json_decref(s);
        }
    }
    *out = all;
    return all != NULL;
}

/* A call about one device (|path| /devices/UDID...) to the simulator
 * process that runs it: the others answer 404. */
static bool sim_device_call(demo *d, const char *method, const char *path, json_t **out)
{
    for (unsigned i = 0; i < d->sims; i++) {
        long status = 0;
        json_t *r = NULL;
        esim_error e = {{0}};
        esim_err rc = chttp_call(&d->sim[i], method, path, NULL, method[0] == 'P' ? "" : NULL, 0,
                                 &status, &r, &e);
        if (rc == ESIM_OK && status == 200) {
            *out = r;
            return true;
        }
        bool last = rc != ESIM_OK || status != 404 || i + 1 == d->sims;
        if (last && !sup_stopping())
            fprintf(stderr, "esim-mdm demo: %s %s: %s (HTTP %ld)\n", method, path,
                    e.msg[0]        ? e.msg
                    : status == 404 ? "in no simulator process"
                                    : chttp_error_message(r),
                    status);
        json_decref(r);
        if (last)
            break;
    }
    *out = NULL;
    return false;
}

/* ---- the story ------------------------------------------------------------------------------ */

/* Whether the service is on TLS: for the PCs, and for iPhones on mtls. */
static bool service_on_tls(const demo *d)
{
    return d->windows_share > 0 || d->mtls;
}

/* Opens |c| on the service instance listening on |port| with data
 * directory |dir| (it writes DIR/api-token before it listens), trusting
 * |ca| when the service is on TLS (service_on_tls), and checks /healthz.
 * Its URL goes to |url|, the token file's path to |token_file|. */
static bool open_instance_api(demo *d, chttp *c, int port, const char *dir, const char *ca,
                              char (*url)[64], char (*token_file)[PATH_MAX + 48])
{
    snprintf(*url, sizeof *url, "%s://127.0.0.1:%d", service_on_tls(d) ? "https" : "http", port);
    snprintf(*token_file, sizeof *token_file, "%s/api-token", dir);
    if (!chttp_open_api(c, *url, *token_file))
        return false;
    if (service_on_tls(d))
        chttp_set_ca(c, ca);
    return call(d, c, "GET", "/healthz", NULL, NULL, 0, 200, NULL);
}

static bool start_parts(demo *d)
{
    char pki[PATH_MAX + 16], cert[PATH_MAX + 32], key[PATH_MAX + 32], ca[PATH_MAX + 32];
    char devca[PATH_MAX + 32], push[PATH_MAX + 32], pushkey[PATH_MAX + 32];
    snprintf(pki, sizeof pki, "%s/pki", d->dir);
    esim_error e = {{0}};
    if (esim_pki_create(pki, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm demo: test PKI: %s\n", e.msg);
        return false;
    }
    snprintf(cert, sizeof cert, "%s/server.pem", pki);
    snprintf(key, sizeof key, "%s/server.key", pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", pki);
    snprintf(devca, sizeof devca, "%s/device-ca.pem", pki);
    snprintf(push, sizeof push, "%s/push.pem", pki);
    snprintf(pushkey, sizeof pushkey, "%s/push.key", pki);

    char *apns_argv[] = {"esim-mdm",    "apns-mock", "--listen",          "127.0.0.1:0",
                         "--tls-cert",  cert,        "--tls-key",         key,
                         "--client-ca", ca,          "--delivery-listen", "127.0.0.1:0",
                         NULL};
    if (sup_start(&d->sup, "apns-mock", apns_argv) < 0 ||
        !wait_mock_ports(d, "apns-mock", "tls", &d->apns_tls, "delivery", &d->apns_delivery))
        return false;

    /* With PCs: the WNS mock, its client secret in a private file for the
     * service, as a real deployment keeps the Store app's secret. */
    char wns_secret_file[PATH_MAX + 32], wns_token_url[64];
    snprintf(wns_secret_file, sizeof wns_secret_file, "%s/wns-secret", d->dir);
    if (d->windows_share > 0) {
        unsigned char raw[24];
        char secret[49];
        esim_error se = {{0}};
        if (esim_random_bytes(raw, sizeof raw) != ESIM_OK) {
            fprintf(stderr, "esim-mdm demo: no randomness for the WNS secret\n");
            return false;
        }
        for (size_t i = 0; i < sizeof raw; i++)
            snprintf(secret + 2 * i, 3, "%02x", raw[i]);
        if (esim_write_file_atomic(wns_secret_file, secret, strlen(secret), 0600, &se) != ESIM_OK) {
            fprintf(stderr, "esim-mdm demo: %s\n", se.msg);
            return false;
        }
        char *wns_argv[] = {"esim-mdm",          "wns-mock",    "--listen",    "127.0.0.1:0",
                            "--tls-cert",        cert,          "--tls-key",   key,
                            "--delivery-listen", "127.0.0.1:0", "--client-id", DEMO_WNS_CLIENT,
                            "--client-secret",   secret,        NULL};
        if (sup_start(&d->sup, "wns-mock", wns_argv) < 0 ||
            !wait_mock_ports(d, "wns-mock", "https", &d->wns_https, "delivery", &d->wns_delivery))
            return false;
        snprintf(wns_token_url, sizeof wns_token_url, "https://127.0.0.1:%d/accesstoken.srf",
                 d->wns_https);
    }

    char svc_port_file[PATH_MAX + 32], svc_dir[PATH_MAX + 32], apns_url[64];
    snprintf(svc_port_file, sizeof svc_port_file, "%s/service.port", d->dir);
    snprintf(svc_dir, sizeof svc_dir, "%s/service", d->dir);
    snprintf(apns_url, sizeof apns_url, "https://127.0.0.1:%d", d->apns_tls);
    /* A read-only key besides the admin token, to look at the dashboard
     * without being able to act (DIR/read-only-key). */
    char keys_file[PATH_MAX + 32], ro_file[PATH_MAX + 32];
    snprintf(keys_file, sizeof keys_file, "%s/api-keys", d->dir);
    snprintf(ro_file, sizeof ro_file, "%s/read-only-key", d->dir);
    {
        unsigned char raw[24];
        char hex[49], line[128];
        esim_error ke = {{0}};
        if (esim_random_bytes(raw, sizeof raw) != ESIM_OK) {
            fprintf(stderr, "esim-mdm demo: no randomness for the read-only key\n");
            return false;
        }
        for (size_t i = 0; i < sizeof raw; i++)
            snprintf(hex + 2 * i, 3, "%02x", raw[i]);
        int n = snprintf(line, sizeof line, "viewer read-only %s\n", hex);
        if (esim_write_file_atomic(keys_file, line, (size_t)n, 0600, &ke) != ESIM_OK ||
            esim_write_file_atomic(ro_file, hex, strlen(hex), 0600, &ke) != ESIM_OK) {
            fprintf(stderr, "esim-mdm demo: %s\n", ke.msg);
            return false;
        }
    }
    /* The fixed arguments; the options below go after them (the rest of
     * the array is NULL, so it stays terminated). */
    char *svc_argv[64] = {"esim-mdm",
                          "serve",
                          "--listen",
                          "127.0.0.1:0",
                          "--port-file",
                          svc_port_file,
                          "--data-dir",
                          svc_dir,
                          "--device-ca",
                          devca,
                          "--apns",
                          apns_url,
                          "--apns-cert",
                          push,
                          "--apns-key",
                          pushkey,
                          "--apns-ca",
                          ca,
                          "--store-sync",
                          "normal",
                          "--not-now-backoff",
                          "1",
                          "--api-keys-file",
                          keys_file,
                          "--access-log",
                          "off"};
    size_t na = 0;
    while (svc_argv[na])
        na++;
    /* The connection caps, sized to a fleet on one address. Every simulated
     * device connects from 127.0.0.1, so the cap per address (512 by
     * default, against one address taking a real service's connections)
     * would be the whole fleet's; and IPAs polling every few seconds keep
     * their connections open, so a thousand of them would fill the default
     * total (1024) that the phones and PCs share. The total: the fleet and
     * 1,024 more, within the descriptors `serve` will have (it raises its
     * soft limit to the hard one, up to 65536) less its reserve. */
    svc_argv[na++] = "--max-connections-per-peer";
    svc_argv[na++] = "1000000";
    char max_conns[24];
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rlim_t fds =
            rl.rlim_cur < rl.rlim_max ? (rl.rlim_max < 65536 ? rl.rlim_max : 65536) : rl.rlim_cur;
        rlim_t want = (rlim_t)d->devices + 1024;
        if (fds != RLIM_INFINITY && fds > 1024 + 64) {
            snprintf(max_conns, sizeof max_conns, "%llu",
                     (unsigned long long)(want < fds - 64 ? want : fds - 64));
            svc_argv[na++] = "--max-connections";
            svc_argv[na++] = max_conns;
        }
    }
    if (d->store) {
        svc_argv[na++] = "--store";
        svc_argv[na++] = (char *)d->store;
    }
    /* Windows PCs speak OMA-DM over TLS with their client certificate (the
     * service asks every TLS client for one; iPhones sign their messages
     * and send none), and are woken through WNS. */
    if (service_on_tls(d)) {
        svc_argv[na++] = "--tls-cert";
        svc_argv[na++] = cert;
        svc_argv[na++] = "--tls-key";
        svc_argv[na++] = key;
    }
    if (d->windows_share > 0) {
        char *extra[] = {"--wns-token-url",   wns_token_url,   "--wns-client-id", DEMO_WNS_CLIENT,
                         "--wns-secret-file", wns_secret_file, "--wns-ca",        ca};
        for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
            svc_argv[na++] = extra[i];
    }
    /* With mtls the iPhones' identity is their TLS client certificate (the
     * PCs' always is), checked in the handshake; their sessions resume. */
    if (d->mtls) {
        svc_argv[na++] = "--device-auth";
        svc_argv[na++] = "mtls";
    }
    /* IoT devices: the eIM signs their packages with the test PKI's eIM
     * key and verifies their eUICCs' certificates up to its CI. */
    char eim_key[PATH_MAX + 32], eim_cert[PATH_MAX + 32], ci[PATH_MAX + 32];
    snprintf(eim_key, sizeof eim_key, "%s/eim.key", pki);
    snprintf(eim_cert, sizeof eim_cert, "%s/eim.pem", pki);
    snprintf(ci, sizeof ci, "%s/ci.pem", pki);
    if (d->iot_devices) {
        char *extra[] = {"--eim-key", eim_key, "--eim-cert", eim_cert, "--euicc-ci", ci};
        for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
            svc_argv[na++] = extra[i];
    }
    if (sup_start(&d->sup, "service", svc_argv) < 0 ||
        !sup_wait_port_file(&d->sup, "service", 30000, &d->svc_port))
        return false;
    char url2[64] = "", svc2_dir[PATH_MAX + 32];
    if (d->instances > 1) {
        /* The second instance: its own port and data directory, the same
         * store (the first one migrated it). */
        char svc2_port_file[PATH_MAX + 32];
        snprintf(svc2_port_file, sizeof svc2_port_file, "%s/service2.port", d->dir);
        snprintf(svc2_dir, sizeof svc2_dir, "%s/service2", d->dir);
        svc_argv[5] = svc2_port_file;
        svc_argv[7] = svc2_dir;
        if (sup_start(&d->sup, "service2", svc_argv) < 0 ||
            !sup_wait_port_file(&d->sup, "service2", 30000, &d->svc2_port))
            return false;
        char token2[PATH_MAX + 48];
        if (!open_instance_api(d, &d->api2, d->svc2_port, svc2_dir, ca, &url2, &token2))
            return false;
    }
    char url[64], token_file[PATH_MAX + 48];
    if (!open_instance_api(d, &d->api, d->svc_port, svc_dir, ca, &url, &token_file))
        return false;
    say(d, "dashboard: %s/dashboard/ (log in with the API key in %s, or the read-only one in %s)\n",
        url, token_file, ro_file);

    char sim_port_file[PATH_MAX + 32], n[16], seed[16], apns_deliv[64], pcs[16], wns_deliv[64];
    char iot_n[16], iot_poll[16], pc_poll[16], first[16], slice[16];
    /* The iPhones and PCs; the IoT devices come besides them. */
    snprintf(n, sizeof n, "%u", d->devices - d->iot_devices);
    snprintf(seed, sizeof seed, "%u", d->seed);
    snprintf(apns_deliv, sizeof apns_deliv, "http://127.0.0.1:%d", d->apns_delivery);
    char *sim_argv[] = {"esim-mdm", "devsim", "--server", url, "--apns-mock", apns_deliv,
                        "--devices", n, "--pki", pki, "--seed", seed, "--status-listen",
                        "127.0.0.1:0", "--status-port-file", sim_port_file, "--max-concurrent",
                        "128", "--supervised-share", d->quiet_mix ? "1" : "0.85", "--notnow-share",
                        d->quiet_mix ? "0" : "0.03", "--offline-share", d->quiet_mix ? "0" : "0.02",
                        /* busy once (36003), and a few models without eSIM (36002) */
                        "--fail-share", d->quiet_mix ? "0" : "0.02", "--no-esim-share",
                        d->quiet_mix ? "0" : "0.005", NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                        NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    size_t k = 0;
    while (sim_argv[k])
        k++;
    if (d->instances > 1) {
        sim_argv[k++] = "--server";
        sim_argv[k++] = url2;
    }
    if (d->windows_share > 0) {
        /* The PCs by number: their share is of the whole fleet, IoT devices
         * included, as --windows-share says. */
        snprintf(pcs, sizeof pcs, "%u", d->windows_pcs);
        snprintf(wns_deliv, sizeof wns_deliv, "http://127.0.0.1:%d", d->wns_delivery);
        sim_argv[k++] = "--windows-pcs";
        sim_argv[k++] = pcs;
        sim_argv[k++] = "--wns-mock";
        sim_argv[k++] = wns_deliv;
        /* Each PC polls every minute (pushes reach it through WNS), less
         * often in a large fleet: at most ~2 polls a second, each a TLS
         * handshake and an OMA-DM session (Windows' own schedule is every
         * 8 hours after the first few). */
        snprintf(pc_poll, sizeof pc_poll, "%u",
                 d->windows_pcs > 120 ? d->windows_pcs * 500 : 60000);
        sim_argv[k++] = "--windows-poll-ms";
        sim_argv[k++] = pc_poll;
    }
    if (d->mtls) {
        /* Each identity's certificate goes to a file under the PKI, as the
         * PCs' do; no --data-dir, which would also write every device's
         * state (with an fsync) after each of its sessions, as the default
         * mode's simulator does not. */
        sim_argv[k++] = "--device-auth";
        sim_argv[k++] = "mtls";
    }
    size_t k_common = k;
    if (d->iot_devices) {
        /* Each IPA polls the eIM (the service's device listener) about once
         * a second, less often in a large fleet: at most ~500 polls/s. The
         * manufacturer's association list (EID, association token) goes to
         * the admin API with the admin's key, read from its file. */
        snprintf(iot_n, sizeof iot_n, "%u", d->iot_devices);
        snprintf(iot_poll, sizeof iot_poll, "%u", d->iot_devices > 500 ? d->iot_devices * 2 : 1000);
        char *extra[] = {"--iot-devices",       iot_n,
                         "--iot-poll-ms",       iot_poll,
                         "--iot-offline-share", d->quiet_mix ? "0" : "0.02",
                         "--eim-url",           url,
                         "--api-url",           url,
                         "--api-key-file",      token_file};
        for (size_t x = 0; x < sizeof extra / sizeof extra[0]; x++)
            sim_argv[k++] = extra[x];
    }
    size_t k_first = k;
    /* With several simulator processes, each runs a slice of the iPhones
     * and PCs (each device as one simulator of the fleet makes it) on push
     * channels of its own at both mocks; the first runs the IoT devices. */
    for (unsigned i = 0; i < d->sims; i++) {
        k = i ? k_common : k_first;
        unsigned fleet = d->devices - d->iot_devices;
        unsigned lo = (unsigned)((uint64_t)fleet * i / d->sims),
                 hi = (unsigned)((uint64_t)fleet * (i + 1) / d->sims);
        if (d->sims > 1) {
            snprintf(first, sizeof first, "%u", lo);
            snprintf(slice, sizeof slice, "%u", hi - lo);
            char *extra[] = {"--first-device",    first, "--slice-devices", slice, "--channel",
                             (char *)sim_names[i]};
            for (size_t x = 0; x < sizeof extra / sizeof extra[0]; x++)
                sim_argv[k++] = extra[x];
        }
        sim_argv[k] = NULL;
        snprintf(sim_port_file, sizeof sim_port_file, "%s/%s.port", d->dir, sim_names[i]);
        if (sup_start(&d->sup, sim_names[i], sim_argv) < 0)
            return false;
    }
    /* Started together, then waited for: they make their devices at once. */
    for (unsigned i = 0; i < d->sims; i++) {
        if (!sup_wait_port_file(&d->sup, sim_names[i], 30000, &d->sim_ports[i]))
            return false;
        char sim_url[64];
        snprintf(sim_url, sizeof sim_url, "http://127.0.0.1:%d", d->sim_ports[i]);
        chttp_open_plain(&d->sim[i], sim_url, NULL);
    }
    return true;
}

/* How often the demo asks the simulator for its /stats while it waits:
 * every 100 ms up to 10,000 devices, then less often (1 s at 100,000), as
 * each answer walks every device in the simulator's loop, which the devices
 * are waiting for. */
static int stats_poll_ms(const demo *d)
{
    unsigned ms = d->devices / 100;
    return ms < 100 ? 100 : ms > 1000 ? 1000 : (int)ms;
}

/* Waits until the simulator's devices are all enrolled: with
 * --enrol-timeout, at most that long; by default as long as enrolment moves
 * (it gives up after 120 s without one more device enrolled), so the limit
 * grows with the fleet and the machine's speed. */
static bool wait_enrolled(demo *d, double *secs)
{
    int64_t start = esim_mono_ms(), progress_at = start;
    long enrolled = 0;
    char refused[400] = "";
    for (;;) {
        int64_t now = esim_mono_ms();
        if (d->enrol_timeout_s > 0 ? now - start >= (int64_t)(d->enrol_timeout_s * 1000.0)
                                   : now - progress_at >= 120000)
            break;
        if (sup_stopping() || !sup_alive(&d->sup))
            return false;
        json_t *s = NULL;
        long seen = enrolled;
        if (sim_stats(d, &s)) {
            /* iPhones enrolled, PCs that finished a session (the service
             * then knows them, bound to their certificate, and their EID),
             * and IoT eUICCs the eIM registered from the association list. */
            const json_t *iot = json_object_get(s, "iot");
            seen = jint(s, "enrolled_now") + jint(json_object_get(s, "windows"), "known") +
                   jint(iot, "registered") + jint(iot, "already_registered");
            /* Why the service refused enrolments, in its words. */
            const json_t *r = json_object_get(s, "enrolment_refused");
            if (r)
                snprintf(refused, sizeof refused,
                         "; the service refused %ld enrolment%s, the "
                         "last (HTTP %ld): %s",
                         jint(r, "count"), jint(r, "count") == 1 ? "" : "s", jint(r, "status"),
                         jstr(r, "reason"));
        }
        json_decref(s);
        if (seen > enrolled)
            progress_at = esim_mono_ms();
        enrolled = seen;
        if (enrolled >= (long)d->devices) {
            *secs = (double)(esim_mono_ms() - start) / 1000.0;
            return true;
        }
        sup_sleep_ms(stats_poll_ms(d));
    }
    if (d->enrol_timeout_s > 0)
        fprintf(stderr, "esim-mdm demo: only %ld of %u devices enrolled within %.0f s%s\n",
                enrolled, d->devices, d->enrol_timeout_s, refused);
    else
        fprintf(stderr,
                "esim-mdm demo: only %ld of %u devices enrolled, none more in the last 120 s%s\n",
                enrolled, d->devices, refused);
    return false;
}

/* What the demo does to a PC's or an IoT device's order on the SM-DP+, so
 * a few fail the way they fail in the field. */
typedef enum {
    FAULT_NONE,
    FAULT_NOT_RELEASED, /* the operator prepared the profile but never released it */
    FAULT_NO_ORDER,     /* the operator has no profile for this EID */
} dev_fault;

typedef struct {
    char udid[65]; /* a PC's DeviceID */
    char eid[ESIM_EID_LEN + 1];
    char iccid[21];
    char serial[64]; /* "" for a PC: its EID comes over OMA-DM, not in the manifest */
    bool windows;
    bool iot; /* an IoT eUICC: its UDID is its EID */
    dev_fault fault;
} demo_dev;

/* Every 25th PC (and IoT device) from the 4th has its order left
 * unreleased, every 25th from the 8th none at all: two in the first ten,
 * 8 % of a large fleet. */
static dev_fault fault_of(size_t k)
{
    return k % 25 == 3 ? FAULT_NOT_RELEASED : k % 25 == 7 ? FAULT_NO_ORDER : FAULT_NONE;
}

static int cmp_udid(const void *a, const void *b)
{
    return strcmp(((const demo_dev *)a)->udid, ((const demo_dev *)b)->udid);
}

/* The IoT eUICCs the eIM registered (the manufacturer's association list
 * came from the simulator), appended to |devs| from |*n| on. */
static bool collect_iot(demo *d, demo_dev *devs, size_t *n, size_t cap)
{
    char after[80] = "";
    size_t k = 0;
    for (;;) {
        char path[200];
        json_t *r = NULL;
        snprintf(path, sizeof path, "/v1/iot/devices?limit=1000%s%s", after[0] ? "&after=" : "",
                 after);
        if (!call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &r))
            return false;
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(r, "devices"), i, v)
        {
            if (*n == cap)
                break;
            demo_dev *x = &devs[(*n)++];
            x->iot = true;
            snprintf(x->udid, sizeof x->udid, "%s", jstr(v, "eid"));
            snprintf(x->eid, sizeof x->eid, "%s", jstr(v, "eid"));
            if (!d->quiet_mix)
                x->fault = fault_of(k);
            k++;
        }
        snprintf(after, sizeof after, "%s", jstr(r, "next_after"));
        json_decref(r);
        if (!after[0] || *n == cap)
            return true;
    }
}

/* What the simulator says its devices are (UDID, EID), and the service's
 * serial numbers for them: the OEM manifest an admin would receive. */
static bool collect_devices(demo *d, demo_dev **out)
{
    /* Each simulator process lists its iPhones, then its PCs; their
     * slices follow each other, so the iPhones of all of them, then the PCs
     * of all, are in the order one simulator of the fleet lists them. */
    json_t *arr = json_array(), *pc_arr = json_array();
    for (unsigned k = 0; arr && pc_arr && k < d->sims; k++) {
        json_t *s = NULL;
        if (!call(d, &d->sim[k], "GET", "/devices", NULL, NULL, 0, 200, &s)) {
            json_decref(arr);
            json_decref(pc_arr);
            return false;
        }
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(s, "devices"), i, v)
            json_array_append(strcmp(jstr(v, "platform"), "windows") == 0 ? pc_arr : arr, v);
        json_decref(s);
    }
    json_array_extend(arr, pc_arr);
    json_decref(pc_arr);
    size_t n_sim = json_array_size(arr), n = n_sim;
    demo_dev *devs = calloc(n_sim + d->iot_devices + 1, sizeof *devs);
    if (!devs) {
        json_decref(arr);
        return false;
    }
    size_t pcs = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        devs[i].windows = strcmp(jstr(v, "platform"), "windows") == 0;
        snprintf(devs[i].udid, sizeof devs[i].udid, "%s",
                 devs[i].windows ? jstr(v, "device_id") : jstr(v, "udid"));
        snprintf(devs[i].eid, sizeof devs[i].eid, "%s", jstr(v, "eid"));
        if (devs[i].windows && !d->quiet_mix)
            devs[i].fault = fault_of(pcs);
        pcs += devs[i].windows;
        /* One order per device: ICCIDs 8944 0000 ..., Luhn-completed. */
        snprintf(devs[i].iccid, sizeof devs[i].iccid, "89440000%010u0",
                 (unsigned)((i + 1) % 1000000000u));
        esim_iccid_set_check_digit(devs[i].iccid, NULL);
    }
    json_decref(arr);
    if (d->iot_devices && !collect_iot(d, devs, &n, n_sim + d->iot_devices)) {
        free(devs);
        return false;
    }
    /* One order per IoT device too, after the phones' and PCs' ICCIDs. */
    for (size_t i = n_sim; i < n; i++) {
        snprintf(devs[i].iccid, sizeof devs[i].iccid, "89440000%010u0",
                 (unsigned)((i + 1) % 1000000000u));
        esim_iccid_set_check_digit(devs[i].iccid, NULL);
    }
    qsort(devs, n, sizeof *devs, cmp_udid);
    /* Serial numbers, from the service's inventory, page by page (PCs
     * have none: they are known by DeviceID and certificate; nor IoT
     * devices, known by EID). */
    char after[80] = "";
    size_t found = 0;
    for (size_t i = 0; i < n; i++)
        found += devs[i].windows || devs[i].iot;
    for (;;) {
        char path[320];
        snprintf(path, sizeof path, "/v1/devices?limit=1000%s%s", after[0] ? "&after=" : "", after);
        json_t *r = NULL;
        if (!call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &r)) {
            free(devs);
            return false;
        }
        json_t *list = json_object_get(r, "devices");
        size_t k;
        json_t *v;
        json_array_foreach(list, k, v)
        {
            demo_dev key;
            snprintf(key.udid, sizeof key.udid, "%s", jstr(v, "udid"));
            demo_dev *hit = bsearch(&key, devs, n, sizeof *devs, cmp_udid);
            if (hit && !hit->windows && !hit->iot && !hit->serial[0]) {
                snprintf(hit->serial, sizeof hit->serial, "%s", jstr(v, "serial_number"));
                found++;
            }
        }
        const char *next = jstr(r, "next_after");
        snprintf(after, sizeof after, "%s", next);
        json_decref(r);
        if (!after[0])
            break;
    }
    if (found != n || n != d->devices) {
        fprintf(stderr, "esim-mdm demo: the service knows %zu of the %u simulated devices\n", found,
                d->devices);
        free(devs);
        return false;
    }
    *out = devs;
    return true;
}

static bool write_text(demo *d, const char *name, const esim_buf *b)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", d->dir, name);
    esim_error e = {{0}};
    if (esim_write_file_atomic(path, b->data, b->len, 0600, &e) != ESIM_OK) {
        fprintf(stderr, "esim-mdm demo: %s\n", e.msg);
        return false;
    }
    return true;
}

/* The operator's side: one released order per device on the SM-DP+. */
static bool start_smdp(demo *d, const demo_dev *devs, size_t n)
{
    esim_buf csv = {0};
    for (size_t i = 0; i < n; i++)
        if (devs[i].fault == FAULT_NONE)
            esim_buf_printf(&csv, "%s,%s,DEMO-%06zu\n", devs[i].eid, devs[i].iccid, i + 1);
    bool ok = write_text(d, "orders.csv", &csv);
    esim_buf_free(&csv);
    if (!ok)
        return false;
    char pki[PATH_MAX + 16], orders[PATH_MAX + 16], port_file[PATH_MAX + 16];
    snprintf(pki, sizeof pki, "%s/pki", d->dir);
    snprintf(orders, sizeof orders, "%s/orders.csv", d->dir);
    snprintf(port_file, sizeof port_file, "%s/smdp.port", d->dir);
    char *argv[] = {"esim-mdm", "smdp", "--pki",       pki,       "--listen", "127.0.0.1:0",
                    "--orders", orders, "--port-file", port_file, NULL};
    if (sup_start(&d->sup, "smdp", argv) < 0 ||
        !sup_wait_port_file(&d->sup, "smdp", 30000, &d->smdp_port))
        return false;
    char url[64], ca[PATH_MAX + 16];
    snprintf(url, sizeof url, "https://127.0.0.1:%d", d->smdp_port);
    snprintf(ca, sizeof ca, "%s/pki/ca.pem", d->dir);
    chttp_open_plain(&d->smdp, url, ca);
    /* The SM-DP+ made its admin token before it listened. */
    char token_path[PATH_MAX + 64];
    snprintf(token_path, sizeof token_path, "%s/pki/smdp-admin-token", d->dir);
    esim_buf tok = {0};
    if (esim_read_file(token_path, sizeof d->smdp.token, &tok, NULL) == ESIM_OK)
        snprintf(d->smdp.token, sizeof d->smdp.token, "%.*s",
                 (int)strcspn((const char *)tok.data, "\r\n"), (const char *)tok.data);
    esim_buf_free(&tok);
    /* The orders the operator prepared but did not release. */
    for (size_t i = 0; i < n; i++) {
        if (devs[i].fault != FAULT_NOT_RELEASED)
            continue;
        char mid[32];
        snprintf(mid, sizeof mid, "DEMO-%06zu", i + 1);
        if (!post_json(d, &d->smdp, "/admin/orders",
                       json_pack("{s:s, s:s, s:s, s:b}", "eid", devs[i].eid, "iccid", devs[i].iccid,
                                 "matching_id", mid, "released", 0),
                       201, NULL))
            return false;
    }
    return true;
}

/* The offline workflow, as an admin does it: the OEM manifest (serial,EID)
 * and the operator's activation codes (EID,LPA:1$…,ICCID). */
static bool import_files(demo *d, const demo_dev *devs, size_t n)
{
    esim_buf manifest = {0}, codes = {0};
    esim_buf_append_str(&manifest, "serial,eid\n");
    for (size_t i = 0; i < n; i++) {
        if (!devs[i].windows && !devs[i].iot)
            esim_buf_printf(&manifest, "%s,%s\n", devs[i].serial, devs[i].eid);
        esim_buf_printf(&codes, "%s,LPA:1$127.0.0.1$DEMO-%06zu,%s\n", devs[i].eid, i + 1,
                        devs[i].iccid);
    }
    bool ok = write_text(d, "oem-manifest.csv", &manifest) &&
              write_text(d, "activation-codes.txt", &codes);
    json_t *r = NULL;
    /* Parts under the service's 1 MiB body limit, line numbers kept. */
    for (int kind = 0; ok && kind < 2; kind++) {
        const esim_buf *b = kind ? &codes : &manifest;
        size_t pos = 0, line = 0, imported = 0, bad = 0, matched = 0;
        while (ok && pos < b->len) {
            size_t end = pos + 768 * 1024 < b->len ? pos + 768 * 1024 : b->len;
            while (end < b->len && end > pos && b->data[end - 1] != '\n')
                end--;
            char path[96];
            snprintf(path, sizeof path, "/v1/import/%s?line_offset=%zu",
                     kind ? "activation-codes" : "eids", line);
            ok = call(d, &d->api, "POST", path, "text/csv", (const char *)b->data + pos, end - pos,
                      200, &r);
            imported += (size_t)jint(r, "imported");
            bad += (size_t)jint(r, "bad_total");
            matched += (size_t)jint(r, "matched");
            json_decref(r);
            r = NULL;
            for (size_t k = pos; k < end; k++)
                line += b->data[k] == '\n';
            pos = end;
        }
        if (ok && kind == 0)
            say(d,
                "  imported the OEM manifest: %zu rows, %zu matched to enrolled devices, %zu bad\n",
                imported, matched, bad);
        else if (ok)
            say(d,
                "  imported the operator's activation codes: %zu rows (expected ICCIDs), %zu bad\n",
                imported, bad);
    }
    esim_buf_free(&manifest);
    esim_buf_free(&codes);
    return ok;
}

/* The inventory's commands' answers so far, by the service's own counts
 * (GET /v1/commands/{uuid}?limit=0 for each of its commands): acknowledged,
 * error or format error. False when a count cannot be read. */
static bool inventory_answered_now(demo *d, long *answered)
{
    long sum = 0;
    for (size_t k = 0; k < d->n_inventory_cmds; k++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/commands/%s?limit=0", d->inventory_cmds[k]);
        json_t *r = NULL;
        if (!call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &r))
            return false;
        const json_t *c = json_object_get(r, "counts");
        sum += jint(c, "acknowledged") + jint(c, "error") + jint(c, "format_error");
        json_decref(r);
    }
    *answered = sum;
    return true;
}

/* Wakes the iPhones |idx|[0..|n|) (/v1/push, at most 256 a call); adds
 * how many pushes APNs was handed to *|sent| and the rest (no token, a dead
 * token, the client refusing) to *|failed|. False on a call that failed as
 * a whole. */
static bool inventory_wake(demo *d, const demo_dev *devs, const size_t *idx, size_t n, long *sent,
                           long *failed)
{
    esim_buf path = {0};
    bool ok = true;
    for (size_t at = 0; ok && at < n; at += 256) {
        size_t m = n - at < 256 ? n - at : 256;
        path.len = 0;
        esim_buf_append_str(&path, "/v1/push/");
        for (size_t i = 0; i < m; i++) {
            if (i)
                esim_buf_append_str(&path, ",");
            esim_buf_append_str(&path, devs[idx[at + i]].udid);
        }
        esim_buf_append(&path, "", 1);
        long status = 0;
        json_t *r = NULL;
        esim_error e = {{0}};
        /* 207: some pushes failed, 500: all did; each says so per device. */
        if (chttp_call(&d->api, "POST", (const char *)path.data, NULL, NULL, 0, &status, &r, &e) !=
                ESIM_OK ||
            (status != 200 && status != 207 && status != 500) || !json_object_get(r, "devices")) {
            if (!sup_stopping())
                fprintf(stderr, "esim-mdm demo: POST /v1/push/...: %s\n",
                        e.msg[0] ? e.msg : chttp_error_message(r));
            ok = false;
        } else {
            const char *k;
            json_t *v;
            json_object_foreach(json_object_get(r, "devices"), k, v)
            {
                if (strcmp(jstr(v, "push"), "sent") == 0)
                    (*sent)++;
                else
                    (*failed)++;
            }
        }
        json_decref(r);
    }
    esim_buf_free(&path);
    return ok;
}

/* DeviceInformation (IsSupervised, OSVersion) to every iPhone, as MDM
 * servers do after enrolment, so campaign warnings know who is supervised.
 * The command is queued for every iPhone at once, without a push; then the
 * iPhones are woken the way a service wakes a large fleet, at most
 * max_in_flight of them pushed and not yet answered (by the service's
 * counts), for at most inventory_wait_s. An iPhone not woken by then keeps
 * the command in its queue and answers it in the same wake-up as the
 * campaign's first command. (Pushing all 80,000 iPhones of a 100,000-device
 * fleet at once put the campaign's first devices behind every one of them
 * in the simulator: issue 17.) */
static void inventory(demo *d, const demo_dev *devs, size_t n)
{
    json_t *before = NULL;
    sim_stats(d, &before);
    /* NotNow is not an answer: the device keeps the command for later. */
    long not_now0 = jint(before, "not_now");
    json_decref(before);
    size_t phones = 0;
    size_t *idx = calloc(n ? n : 1, sizeof *idx);
    if (!idx)
        return;
    for (size_t i = 0; i < n; i++)
        if (!devs[i].windows && !devs[i].iot) /* an Apple command; PCs tell their EID
                                                over OMA-DM, the eIM knows IoT EIDs */
            idx[phones++] = i;
    size_t n_cmds = (phones + 19999) / 20000;
    d->inventory_cmds = calloc(n_cmds ? n_cmds : 1, sizeof *d->inventory_cmds);
    if (!d->inventory_cmds) {
        free(idx);
        return;
    }
    /* At most 20,000 devices a call: the API's body limit. */
    for (size_t start = 0; start < phones; start += 20000) {
        json_t *udids = json_array();
        for (size_t i = start; i < phones && i < start + 20000; i++)
            json_array_append_new(udids, json_string(devs[idx[i]].udid));
        json_t *body =
            json_pack("{s:o, s:{s:s, s:[s,s]}, s:b}", "udids", udids, "command", "request_type",
                      "DeviceInformation", "queries", "IsSupervised", "OSVersion", "push", 0);
        json_t *r = NULL;
        if (!post_json(d, &d->api, "/v1/commands", body, 200, &r)) {
            free(idx);
            return;
        }
        snprintf(d->inventory_cmds[d->n_inventory_cmds++], sizeof d->inventory_cmds[0], "%s",
                 jstr(r, "command_uuid"));
        json_decref(r);
    }
    size_t window = d->max_in_flight ? d->max_in_flight : phones;
    int64_t start = esim_mono_ms(), limit_ms = (int64_t)(d->inventory_wait_s * 1000.0);
    long answered = 0, woken = 0, failed = 0, peak = 0;
    size_t next = 0; /* idx[next..phones) not woken yet */
    while (!sup_stopping()) {
        if (!inventory_answered_now(d, &answered))
            break;
        long in_flight = woken - failed - answered;
        if (in_flight < 0)
            in_flight = 0;
        /* Offline and locked devices answer later; wait for most, not all. */
        if (next == phones && answered >= (long)(phones * 95 / 100))
            break;
        if (esim_mono_ms() - start >= limit_ms)
            break;
        if (next < phones && (size_t)in_flight < window) {
            size_t m = window - (size_t)in_flight;
            if (m > phones - next)
                m = phones - next;
            long sent = 0;
            bool ok = inventory_wake(d, devs, idx + next, m, &sent, &failed);
            woken += sent + (ok ? 0 : (long)m - sent); /* unknown: assume out */
            next += m;
            if (in_flight + sent > peak)
                peak = in_flight + sent;
        }
        sup_sleep_ms(stats_poll_ms(d));
    }
    free(idx);
    json_t *s = NULL;
    long not_now = 0;
    if (sim_stats(d, &s))
        not_now = jint(s, "not_now") - not_now0;
    json_decref(s);
    d->inventory_s = (double)(esim_mono_ms() - start) / 1000.0;
    d->inventory_answered = answered < (long)phones ? answered : (long)phones;
    d->inventory_not_now = not_now;
    d->inventory_woken = woken;
    d->inventory_folded = (long)(phones - next);
    d->inventory_peak_in_flight = peak;
    say(d,
        "  inventory: %ld of %zu iPhones answered DeviceInformation (IsSupervised, OSVersion) in "
        "%.1f s; %ld NotNow (busy devices, asked again later)\n",
        d->inventory_answered, phones, d->inventory_s, not_now);
    if (d->inventory_folded)
        say(d,
            "  (woken at most %zu at a time; the other %ld iPhones have it queued and answer it "
            "in the same wake-up as the campaign's first command)\n",
            window, d->inventory_folded);
}

static json_t *campaign_body(demo *d, const char *name, json_t *target, const char *const *steps,
                             size_t n_steps, bool policy)
{
    char smdp[64];
    snprintf(smdp, sizeof smdp, "https://127.0.0.1:%d", d->smdp_port);
    json_t *st = json_array();
    for (size_t i = 0; i < n_steps; i++)
        json_array_append_new(st, json_string(steps[i]));
    /* Re-push after 120 s: on a loaded machine a pushed phone can wait a
     * minute for its turn in the simulator and the service (30 s re-pushed
     * most of a 2,000-device fleet once: issue 17); the simulated phones
     * that are offline for a while check in by themselves when back. */
    json_t *b = json_pack("{s:s, s:o, s:o, s:s, s:{s:f, s:f, s:f, s:f, s:f, s:i, s:i, s:i}}",
                          "name", name, "target", target, "steps", st, "smdp_url", smdp, "settings",
                          "pushes_per_second", d->pps, "repush_after_s", 120.0, "expiry_s",
                          d->timeout_s, "retry_base_s", 0.5, "retry_max_s", 4.0, "max_retries", 12,
                          "verify_attempts", 3, "max_in_flight", (int)d->max_in_flight);
    if (b && policy)
        json_object_set_new(b, "policy",
                            json_pack("{s:s, s:s, s:s}", "esim_modification", "deny",
                                      "preserve_esim_on_erase", "on", "esim_outgoing_transfers",
                                      "deny"));
    return b;
}

/* Warnings grouped by reason, the way a console shows them before "Send". */
static void show_warnings(demo *d, const json_t *created)
{
    long total = jint(created, "warnings_total");
    if (!total) {
        say(d, "  no warnings: every device will apply every restriction\n");
        return;
    }
    say(d, "  warnings before sending (%ld):\n", total);
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(created, "warnings_by_kind"), k, v)
        say(d, "    %6lld devices: %s\n", (long long)json_integer_value(v), k);
}

/* With two instances, the campaign's pushes and commands as counted by
 * the instance that drove it: those counters are the engine's, kept in
 * the memory of its lease holder, so the copy on the instance the demo
 * follows (|summary|) shows none. The larger of the two instances' counts
 * is kept (the demo kills no instance, so the lease stays where it was
 * taken). */
static void counts_from_driver(demo *d, const char *campaign_id, json_t *summary)
{
    if (d->instances < 2 || !summary || !campaign_id)
        return;
    char path[300];
    snprintf(path, sizeof path, "/v1/campaigns/%s", campaign_id);
    json_t *r = NULL;
    if (!call(d, &d->api2, "GET", path, NULL, NULL, 0, 200, &r))
        return;
    static const char *const keys[] = {"pushes", "commands"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        if (jint(r, keys[k]) > jint(summary, keys[k]))
            json_object_set_new(summary, keys[k], json_integer(jint(r, keys[k])));
    json_decref(r);
}

/* The value of the /metrics line that starts with |key| ("name{labels}")
 * on instance |c|, -1 when it did not say. */
static long metric_of(chttp *c, const char *key)
{
    long status = 0, n = -1;
    esim_buf b = {0};
    size_t kl = strlen(key);
    if (chttp_request(c, "GET", "/metrics", NULL, NULL, 0, &status, &b, NULL) == ESIM_OK &&
        status == 200 && esim_buf_append(&b, "", 1) == ESIM_OK) {
        for (const char *at = (const char *)b.data; at; at = strchr(at, '\n')) {
            at += *at == '\n';
            if (strncmp(at, key, kl) == 0 && at[kl] == ' ') {
                n = strtol(at + kl + 1, NULL, 10);
                break;
            }
        }
    }
    esim_buf_free(&b);
    return n;
}

/* Runs a campaign to its end; *summary is the last status. */
static bool run_campaign(demo *d, json_t *body, bool quiet, json_t **created, json_t **summary)
{
    *summary = NULL;
    /* With two instances: created on the second, followed on the first
     * (the campaign API answers on any instance). */
    if (!post_json(d, d->instances > 1 ? &d->api2 : &d->api, "/v1/campaigns", body, 201, created))
        return false;
    int rc = campaign_follow(&d->api, jstr(*created, "id"), d->timeout_s + 30, quiet, summary);
    counts_from_driver(d, jstr(*created, "id"), *summary);
    return rc == CLI_EXIT_OK && !sup_stopping();
}

/* The campaign's failed devices (GET …/devices?state=failed), NULL when the
 * call failed; the caller frees it. */
static json_t *failed_devices(demo *d, const char *campaign_id)
{
    char path[320];
    snprintf(path, sizeof path, "/v1/campaigns/%s/devices?state=failed&limit=10000", campaign_id);
    json_t *r = NULL;
    return call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &r) ? r : NULL;
}

/* The demo's own record of the device |udid| (|devs| sorted), or NULL. */
static const demo_dev *demo_dev_of(const demo_dev *devs, size_t n_devs, const char *udid)
{
    demo_dev key;
    snprintf(key.udid, sizeof key.udid, "%s", udid);
    return bsearch(&key, devs, n_devs, sizeof *devs, cmp_udid);
}

/* Failed devices whose hardware has no eSIM (error 36002), and PCs the demo
 * made fail that failed for that reason (discovery at the SM-DP+ failed:
 * nothing released for the EID). */
static long count_no_esim(demo *d, const char *campaign_id, const demo_dev *devs, size_t n_devs,
                          long *pcs_failed_as_made)
{
    long n = 0;
    *pcs_failed_as_made = 0;
    json_t *r = failed_devices(d, campaign_id);
    if (!r)
        return 0;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "devices"), i, v)
    {
        n += strstr(jstr(v, "reason"), "36002") != NULL;
        const demo_dev *hit = demo_dev_of(devs, n_devs, jstr(v, "udid"));
        *pcs_failed_as_made += hit && hit->windows && hit->fault != FAULT_NONE &&
                               strstr(jstr(v, "reason"), "DiscoveryState 4") != NULL;
    }
    json_decref(r);
    return n;
}

/* The campaign's counts for one platform ("apple", "windows"). */
static void print_platform(demo *d, const json_t *s, const char *platform, const char *label)
{
    const json_t *p = json_object_get(json_object_get(s, "by_platform"), platform);
    if (!p)
        return;
    say(d, "  %-26s %10ld   (verified %ld, failed %ld, unverified %ld, timed out %ld)\n", label,
        jint(p, "devices"), jint(p, "verified"), jint(p, "failed"), jint(p, "unverified"),
        jint(p, "timed_out"));
}

static void print_table(demo *d, const json_t *s, double secs)
{
    const json_t *c = json_object_get(s, "counts");
    long pushes = jint(s, "pushes"), commands = jint(s, "commands"), n = jint(s, "devices");
    say(d, "\n  %-26s %10ld\n", "devices", n);
    static const char *const rows[] = {"verified",  "unverified", "failed",
                                       "timed_out", "canceled",   "done"};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (jint(c, rows[i]) || i < 4)
            say(d, "  %-26s %10ld\n", rows[i], jint(c, rows[i]));
    say(d, "  %-26s %10ld   (acknowledged is not installed: verified counts eSIMs seen)\n",
        "refresh acknowledged", jint(s, "refresh_acknowledged"));
    say(d, "  %-26s %10ld   (%.2f per device)\n", "pushes", pushes,
        n ? (double)pushes / (double)n : 0);
    say(d, "  %-26s %10ld\n", "commands", commands);
    print_platform(d, s, "apple", "iPhones");
    print_platform(d, s, "windows", "Windows PCs");
    print_platform(d, s, "iot", "IoT devices");
    say(d, "  %-26s %10.2f s\n", "campaign duration", secs);
    if (secs > 0)
        say(d, "  %-26s %10.0f verified/s, %.0f pushes/s, %.0f commands/s\n", "rates",
            (double)jint(c, "verified") / secs, (double)pushes / secs, (double)commands / secs);
}

/* ---- IoT devices ------------------------------------------------------------------------ */

#define DEMO_GROUP "demo-phones-and-pcs"

/* With IoT devices the main campaign (restrictions profile first, which an
 * IoT eUICC has no package for) goes to a group of the iPhones and PCs; the
 * IoT devices get a campaign of their own. Members in parts under the
 * service's body limit. */
static bool make_group(demo *d, const demo_dev *devs, size_t n)
{
    bool created = false;
    for (size_t i = 0; i < n;) {
        json_t *udids = json_array();
        for (; i < n && json_array_size(udids) < 5000; i++)
            if (!devs[i].iot)
                json_array_append_new(udids, json_string(devs[i].udid));
        if (!json_array_size(udids)) {
            json_decref(udids);
            continue;
        }
        bool ok = created ? post_json(d, &d->api, "/v1/groups/" DEMO_GROUP "/members",
                                      json_pack("{s:o}", "add", udids), 200, NULL)
                          : post_json(d, &d->api, "/v1/groups",
                                      json_pack("{s:s, s:o}", "name", DEMO_GROUP, "udids", udids),
                                      201, NULL);
        if (!ok)
            return false;
        created = true;
    }
    return created;
}

/* |a| + |b|: two campaigns' summaries as one (counts, pushes, commands,
 * memory added; platforms side by side). */
static json_t *merge_summaries(const json_t *a, const json_t *b)
{
    json_t *m = json_deep_copy(a);
    if (!m || !b)
        return m;
    static const char *const sums[] = {"devices", "refresh_acknowledged", "pushes", "commands",
                                       "memory_bytes"};
    for (size_t i = 0; i < sizeof sums / sizeof sums[0]; i++)
        json_object_set_new(m, sums[i], json_integer(jint(a, sums[i]) + jint(b, sums[i])));
    json_t *c = json_object_get(m, "counts");
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(b, "counts"), k, v)
        json_object_set_new(c, k, json_integer(jint(c, k) + (long)json_integer_value(v)));
    json_t *bp = json_object_get(m, "by_platform");
    json_object_foreach(json_object_get(b, "by_platform"), k, v) json_object_set(bp, k, v);
    return m;
}

/* IoT devices of |campaign_id| the demo made fail that failed for that
 * reason: the SM-DP+'s answer to their download, in the eIM's words. */
static long iot_failed_as_made(demo *d, const char *campaign_id, const demo_dev *devs,
                               size_t n_devs, char *why_out, size_t why_len)
{
    long n = 0;
    json_t *r = failed_devices(d, campaign_id);
    if (!r)
        return 0;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "devices"), i, v)
    {
        const demo_dev *hit = demo_dev_of(devs, n_devs, jstr(v, "udid"));
        const char *why = jstr(v, "reason");
        bool as_made = hit && hit->iot &&
                       ((hit->fault == FAULT_NOT_RELEASED && strstr(why, "not released")) ||
                        (hit->fault == FAULT_NO_ORDER && strstr(why, "no profile ordered")));
        if (as_made && !n) {
            /* the SM-DP+'s words, without the campaign's account around them */
            const char *w = strstr(why, "SM-DP+ refused: ");
            snprintf(why_out, why_len, "%.*s", (int)strcspn(w ? w : why, ";"), w ? w : why);
        }
        n += as_made;
    }
    json_decref(r);
    return n;
}

/* A package's outcome for its one EID: its state ("queued", "sent",
 * "done", "failed", ...) and, when |iccid| is given, whether the listed
 * profiles show it enabled. */
static const char *package_state(demo *d, const char *uuid, const char *iccid, bool *enabled,
                                 char *words, size_t words_len)
{
    static char state[32];
    char path[120];
    snprintf(path, sizeof path, "/v1/iot/packages/%s", uuid);
    json_t *r = NULL;
    snprintf(state, sizeof state, "unknown");
    *enabled = false;
    if (!call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &r))
        return state;
    const json_t *dev = json_array_get(json_object_get(r, "devices"), 0);
    snprintf(state, sizeof state, "%s", jstr(dev, "state"));
    const json_t *res = json_object_get(dev, "result");
    snprintf(words, words_len, "%s", jstr(res, "words"));
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(res, "profiles"), i,
                       p) if (iccid && strcmp(jstr(p, "iccid"), iccid) == 0 &&
                              strcmp(jstr(p, "state"), "enabled") == 0) *enabled = true;
    json_decref(r);
    return state;
}

static bool package_final(const char *state)
{
    return strcmp(state, "queued") != 0 && strcmp(state, "sent") != 0;
}

/* Every 10th verified IoT device is switched to a second profile and back,
 * as an admin does it through the eIM: a second order released on the
 * SM-DP+, a download trigger with its activation code, a package enabling
 * it and listing the profiles, then one enabling the first again and
 * listing them. Each list must show the profile just enabled. */
static bool iot_switch(demo *d, const demo_dev *devs, size_t n, const char *campaign_id,
                       long *tried, long *switched)
{
    *tried = *switched = 0;
    char path[320];
    snprintf(path, sizeof path, "/v1/campaigns/%s/devices?state=verified&limit=10000", campaign_id);
    json_t *ver = NULL;
    if (!call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &ver))
        return false;
    typedef struct {
        const demo_dev *dev;
        char iccid2[21], uuid[3][ESIM_UUID_LEN + 1];
    } sw;
    sw *list = calloc(n ? n : 1, sizeof *list);
    size_t m = 0, k = 0;
    for (size_t i = 0; list && i < n; i++) {
        if (!devs[i].iot)
            continue;
        bool verified = false;
        size_t j;
        json_t *v;
        json_array_foreach(json_object_get(ver, "devices"), j, v) verified |=
            strcmp(jstr(v, "udid"), devs[i].udid) == 0;
        if (verified && k++ % 10 == 0) {
            list[m].dev = &devs[i];
            snprintf(list[m].iccid2, sizeof list[m].iccid2, "89440001%010u0",
                     (unsigned)((i + 1) % 1000000000u));
            esim_iccid_set_check_digit(list[m].iccid2, NULL);
            m++;
        }
    }
    json_decref(ver);
    bool ok = list != NULL;
    for (size_t i = 0; ok && i < m; i++) {
        const demo_dev *x = list[i].dev;
        char mid[32], code[120];
        snprintf(mid, sizeof mid, "DEMO2-%06zu", (size_t)(x - devs) + 1);
        snprintf(code, sizeof code, "1$127.0.0.1:%d$%s", d->smdp_port, mid);
        json_t *r = NULL;
        ok = post_json(d, &d->smdp, "/admin/orders",
                       json_pack("{s:s, s:s, s:s, s:b}", "eid", x->eid, "iccid", list[i].iccid2,
                                 "matching_id", mid, "released", 1),
                       201, NULL);
        json_t *bodies[3] = {
            json_pack("{s:[s], s:{s:s}}", "eids", x->eid, "download", "activation_code", code),
            json_pack("{s:[s], s:[{s:s, s:s}, {s:s}]}", "eids", x->eid, "operations", "op",
                      "enable", "iccid", list[i].iccid2, "op", "list_profiles"),
            json_pack("{s:[s], s:[{s:s, s:s}, {s:s}]}", "eids", x->eid, "operations", "op",
                      "enable", "iccid", x->iccid, "op", "list_profiles")};
        for (int b = 0; b < 3; b++) {
            if (ok && post_json(d, &d->api, "/v1/iot/packages", bodies[b], 201, &r))
                snprintf(list[i].uuid[b], sizeof list[i].uuid[b], "%s", jstr(r, "command_uuid"));
            else if (ok)
                ok = false;
            else
                json_decref(bodies[b]);
            json_decref(r);
            r = NULL;
        }
    }
    *tried = (long)m;
    /* The IPAs take them at their next polls, one after the other. */
    size_t done = 0;
    int64_t until = esim_mono_ms() + (int64_t)(d->timeout_s * 1000.0);
    while (ok && done < m && esim_mono_ms() < until && !sup_stopping()) {
        done = 0;
        for (size_t i = 0; i < m; i++) {
            char w[300];
            bool en;
            done += package_final(package_state(d, list[i].uuid[2], NULL, &en, w, sizeof w));
        }
        if (done < m)
            sup_sleep_ms(200);
    }
    for (size_t i = 0; ok && i < m; i++) {
        char w[3][300];
        bool en2 = false, en1 = false, unused;
        bool dl = strcmp(package_state(d, list[i].uuid[0], NULL, &unused, w[0], sizeof w[0]),
                         "done") == 0;
        bool one =
            strcmp(package_state(d, list[i].uuid[1], list[i].iccid2, &en2, w[1], sizeof w[1]),
                   "done") == 0 &&
            en2;
        bool back =
            strcmp(package_state(d, list[i].uuid[2], list[i].dev->iccid, &en1, w[2], sizeof w[2]),
                   "done") == 0 &&
            en1;
        *switched += dl && one && back;
        if (i < 3 || !(dl && one && back))
            say(d, "  %s: downloaded %s: %s; enabled it: %s (%s); enabled %s again: %s (%s)\n",
                list[i].dev->eid, list[i].iccid2, dl ? "yes" : "NO", en2 ? "listed enabled" : "NOT",
                w[1][0] ? w[1] : "no answer", list[i].dev->iccid, en1 ? "listed enabled" : "NOT",
                w[2][0] ? w[2] : "no answer");
    }
    if (m > 3)
        say(d, "  ... and %zu more\n", m - 3);
    say(d,
        "  %ld of %ld IoT devices switched to a second profile and back, the enabled profile "
        "listed by the eUICC after each switch\n",
        *switched, *tried);
    free(list);
    return ok && *switched == *tried;
}

/* Pick devices from the simulator: verified, supervised, on iOS >= |min_major|. */
static size_t pick_devices(demo *d, const json_t *verified_list, int min_major, size_t want,
                           char (*out)[65])
{
    size_t got = 0, i;
    json_t *v;
    json_array_foreach((json_t *)verified_list, i, v)
    {
        if (got == want)
            break;
        char path[320];
        snprintf(path, sizeof path, "/devices/%s", jstr(v, "udid"));
        json_t *dj = NULL;
        if (!sim_device_call(d, "GET", path, &dj))
            continue;
        const char *os = jstr(dj, "os_version");
        if (!os[0])
            os = jstr(dj, "os");
        if (json_is_true(json_object_get(dj, "supervised")) && atoi(os) >= min_major)
            snprintf(out[got++], 65, "%s", jstr(v, "udid"));
        json_decref(dj);
    }
    return got;
}

/* EraseDevice with PreserveDataPlan on a few devices, their re-enrolment,
 * then a verify-only campaign: the eSIM must still be there. */
static bool erase_keep_esim(demo *d, const json_t *verified_list, size_t *n_out, size_t *still)
{
    char picked[3][65];
    size_t n = pick_devices(d, verified_list, 17, 3, picked);
    *n_out = n;
    *still = 0;
    if (!n) {
        say(d, "  (no supervised verified device on iOS 17+ to erase)\n");
        return false;
    }
    json_t *udids = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(udids, json_string(picked[i]));
    static const char *const erase_steps[] = {"erase_keep_esim"};
    json_t *created = NULL, *sum = NULL;
    int64_t t0 = esim_now_ms();
    bool ok = run_campaign(d,
                           campaign_body(d, "erase keeping the eSIM",
                                         json_pack("{s:O}", "udids", udids), erase_steps, 1, false),
                           true, &created, &sum);
    ok = ok && jint(json_object_get(sum, "counts"), "done") == (long)n;
    say(d, "  EraseDevice (PreserveDataPlan) acknowledged by %ld of %zu devices\n",
        jint(json_object_get(sum, "counts"), "done"), n);
    json_decref(created);
    json_decref(sum);
    /* Wait for each to enrol again (Authenticate after the erase). */
    for (size_t i = 0; ok && i < n; i++) {
        char path[320];
        snprintf(path, sizeof path, "/v1/devices/%s", picked[i]);
        bool back = false;
        for (int64_t until = esim_mono_ms() + 30000;
             !back && esim_mono_ms() < until && !sup_stopping();) {
            json_t *dj = NULL;
            if (call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &dj)) {
                const char *at = jstr(dj, "enrolled_at");
                struct tm tm = {0};
                int ms = 0;
                /* RFC 3339 with milliseconds, UTC */
                if (sscanf(at, "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                           &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) == 7) {
                    tm.tm_year -= 1900;
                    tm.tm_mon -= 1;
                    int64_t enrolled = (int64_t)timegm(&tm) * 1000 + ms;
                    back = enrolled >= t0 && json_is_true(json_object_get(dj, "enrolled")) &&
                           strcmp(jstr(json_object_get(dj, "push"), "state"), "valid") == 0;
                }
            }
            json_decref(dj);
            if (!back)
                sup_sleep_ms(100);
        }
        if (!back) {
            say(d, "  device %s did not re-enrol within 30 s\n", picked[i]);
            ok = false;
        }
    }
    if (ok)
        say(d, "  all %zu erased devices re-enrolled (new push token)\n", n);
    static const char *const verify_steps[] = {"verify"};
    if (ok) {
        ok = run_campaign(d,
                          campaign_body(d, "verify after erase", json_pack("{s:O}", "udids", udids),
                                        verify_steps, 1, false),
                          true, &created, &sum);
        *still = (size_t)jint(json_object_get(sum, "counts"), "verified");
        ok = ok && *still == n;
        say(d, "  verify-only campaign after the erase: %zu of %zu still have the expected eSIM\n",
            *still, n);
        json_decref(created);
        json_decref(sum);
    }
    json_decref(udids);
    return ok;
}

/* A person tries to delete the eSIM and to Quick-Transfer it: the
 * restrictions the campaign installed must refuse both. */
static bool user_actions(demo *d, const json_t *verified_list, bool *del_blocked,
                         bool *xfer_blocked)
{
    char picked[1][65];
    *del_blocked = *xfer_blocked = false;
    if (pick_devices(d, verified_list, 18, 1, picked) != 1) {
        say(d, "  (no supervised verified device on iOS 18 to try user actions on)\n");
        return false;
    }
    const char *actions[2] = {"delete-esim", "transfer-esim"};
    for (int k = 0; k < 2; k++) {
        char path[320];
        snprintf(path, sizeof path, "/devices/%s/actions/%s", picked[0], actions[k]);
        json_t *r = NULL;
        if (!sim_device_call(d, "POST", path, &r))
            return false;
        bool blocked = json_is_false(json_object_get(r, "allowed"));
        say(d, "  user on %s tries %-13s -> %s: %s\n", picked[0], actions[k],
            blocked ? "BLOCKED" : "allowed", jstr(r, "reason"));
        if (k == 0)
            *del_blocked = blocked;
        else
            *xfer_blocked = blocked;
        json_decref(r);
    }
    return *del_blocked && *xfer_blocked;
}

static void sample_diagnosis(demo *d, const char *campaign_id)
{
    /* Prefer a device that had trouble: it makes the better story. */
    char path[200];
    snprintf(path, sizeof path, "/v1/campaigns/%s/devices?limit=10000", campaign_id);
    json_t *r = NULL;
    if (!call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &r))
        return;
    const char *pick = NULL;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "devices"), i, v)
    {
        if (!pick || strcmp(jstr(v, "state"), "verified") != 0 || jint(v, "not_now") > 0) {
            pick = jstr(v, "udid");
            if (strcmp(jstr(v, "state"), "verified") != 0 || jint(v, "not_now") > 0)
                break;
        }
    }
    char udid[65];
    snprintf(udid, sizeof udid, "%s", pick ? pick : "");
    json_decref(r);
    if (!udid[0])
        return;
    snprintf(path, sizeof path, "/v1/devices/%s/diagnosis", udid);
    json_t *dg = NULL;
    if (!call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &dg))
        return;
    say(d, "\n== sample diagnosis (esim-mdm diagnose %s)\n", udid);
    json_array_foreach(json_object_get(dg, "checks"), i, v)
    {
        json_t *ok = json_object_get(v, "ok");
        say(d, "  [%s] %-22s %s\n",
            json_is_true(ok)    ? " ok "
            : json_is_false(ok) ? "FAIL"
                                : " -- ",
            jstr(v, "name"), jstr(v, "detail"));
    }
    /* The operator's side, as the CLI's --smdp shows it: the order's state. */
    json_t *orders = NULL;
    char opath[96]; /* that EID's orders only: all of them are ~2 KB per device in the SM-DP+ */
    snprintf(opath, sizeof opath, "/admin/orders?eid=%s", jstr(dg, "expected_eid"));
    if (call(d, &d->smdp, "GET", opath, NULL, NULL, 0, 200, &orders)) {
        json_array_foreach(json_object_get(orders, "orders"), i, v)
        {
            if (strcmp(jstr(v, "eid"), jstr(dg, "expected_eid")) != 0)
                continue;
            say(d, "  [ -- ] %-22s order %s for this EID on the SM-DP+: %s, served %ld time(s)\n",
                "smdp_order", jstr(v, "iccid"), jstr(v, "state"), jint(v, "downloads"));
        }
        json_decref(orders);
    }
    say(d, "  conclusion:  %s\n  next action: %s\n", jstr(dg, "conclusion"),
        jstr(dg, "next_action"));
    json_decref(dg);
}

/* Each part's CPU so far and the simulator's counts (its iPhones' pushes
 * and check-ins, its TLS connections to every server, its PCs' OMA-DM
 * sessions and WNS pushes). */
static void mark_phase(demo *d, phase_mark *m)
{
    memset(m, 0, sizeof *m);
    for (size_t k = 0; k < N_CHILDREN; k++) {
        m->ok[k] = sup_usage(&d->sup, child_names[k], &m->use[k]);
        if (strcmp(child_names[k], "devsim") != 0)
            continue;
        /* The simulator: every process of it. */
        m->sim_use[0] = m->use[k];
        for (unsigned i = 1; i < d->sims; i++) {
            esim_proc_usage *u = &m->sim_use[i];
            m->ok[k] = sup_usage(&d->sup, sim_names[i], u) && m->ok[k];
            m->use[k].rss_kb += u->rss_kb;
            m->use[k].peak_rss_kb += u->peak_rss_kb;
            m->use[k].cpu_s += u->cpu_s;
        }
    }
    json_t *s = NULL;
    if (sim_stats(d, &s)) {
        const json_t *tls = json_object_get(s, "tls"), *win = json_object_get(s, "windows");
        m->pushes = jint(s, "pushes");
        m->checkins = jint(s, "checkins");
        m->tls = jint(tls, "full") + jint(tls, "resumed");
        m->pc_sessions = jint(win, "sessions");
        m->wns_pushes = jint(win, "wns_pushes");
    }
    json_decref(s);
    m->key_checks = metric_of(&d->api, "esim_mdm_identity_cache_total{result=\"key\"}");
    m->key_tables = metric_of(&d->api, "esim_mdm_identity_key_tables_total");
    m->svc_conns = metric_of(&d->api, "esim_mdm_connections_admitted_total");
    if (d->instances > 1) {
        m->key_checks += metric_of(&d->api2, "esim_mdm_identity_cache_total{result=\"key\"}");
        m->key_tables += metric_of(&d->api2, "esim_mdm_identity_key_tables_total");
        m->svc_conns += metric_of(&d->api2, "esim_mdm_connections_admitted_total");
    }
    json_t *os = NULL;
    if (sup_started(&d->sup, "smdp") &&
        call(d, &d->smdp, "GET", "/admin/orders?summary=1", NULL, NULL, 0, 200, &os)) {
        const json_t *tls = json_object_get(os, "tls");
        m->smdp_conns = jint(tls, "full") + jint(tls, "resumed");
    }
    json_decref(os);
}

/* One phase, |a| to |b|, as a JSON object: each started part's CPU
 * seconds, and the simulator's pushes, check-ins, TLS connections (to
 * every server: the service, the SM-DP+, the mocks) and PC sessions in it,
 * the connections the service admitted and the SM-DP+'s handshakes. */
static json_t *phase_json(const demo *d, const phase_mark *a, const phase_mark *b)
{
    json_t *cpu = json_object();
    for (size_t k = 0; k < N_CHILDREN; k++) {
        if (!sup_started(&d->sup, child_names[k]))
            continue;
        double c = b->use[k].cpu_s - a->use[k].cpu_s;
        json_object_set_new(cpu, child_names[k], json_real(c > 0 ? c : 0.0));
    }
    return json_pack("{s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "cpu_s", cpu, "pushes",
                     (json_int_t)(b->pushes - a->pushes), "checkins",
                     (json_int_t)(b->checkins - a->checkins), "tls_connections",
                     (json_int_t)(b->tls - a->tls), "pc_sessions",
                     (json_int_t)(b->pc_sessions - a->pc_sessions), "wns_pushes",
                     (json_int_t)(b->wns_pushes - a->wns_pushes), "key_checks",
                     (json_int_t)(b->key_checks - a->key_checks), "key_tables",
                     (json_int_t)(b->key_tables - a->key_tables), "service_connections",
                     (json_int_t)(b->svc_conns - a->svc_conns), "smdp_connections",
                     (json_int_t)(b->smdp_conns - a->smdp_conns));
}

static int run(demo *d)
{
    int64_t t_start = esim_mono_ms();
    say(d, "== esim-mdm demo: %u simulated devices, everything on loopback (work dir %s)\n",
        d->devices, d->dir);
    if (!start_parts(d))
        return CLI_EXIT_FAIL;
    /* The simulator's status port, or each process's. */
    char sims[120] = "";
    int sl = 0;
    if (d->sims > 1)
        sl = snprintf(sims, sizeof sims, "%u processes, each a slice of the fleet: ", d->sims);
    for (unsigned i = 0; i < d->sims && sl >= 0 && (size_t)sl < sizeof sims; i++)
        sl +=
            snprintf(sims + sl, sizeof sims - (size_t)sl, "%s:%d", i ? ", " : "", d->sim_ports[i]);
    if (d->instances > 1 && d->windows_share > 0)
        say(d,
            "  started the APNs mock (:%d), the WNS mock (:%d), two instances of the service on "
            "one PostgreSQL (:%d, :%d, TLS) and the device simulator (%s): its iPhones and "
            "PCs use both instances, the PCs a session on one then the next on the other (the "
            "campaign is driven by the second, which replays from the store the answers the "
            "first received)\n",
            d->apns_tls, d->wns_https, d->svc_port, d->svc2_port, sims);
    else if (d->instances > 1)
        say(d,
            "  started the APNs mock (:%d), two instances of the service on one PostgreSQL "
            "(:%d, :%d) and the device simulator (%s), its devices using both\n",
            d->apns_tls, d->svc_port, d->svc2_port, sims);
    else if (d->windows_share > 0)
        say(d,
            "  started the APNs mock (:%d), the WNS mock (:%d), the service (:%d, TLS: %s present "
            "client certificates) and the device simulator (%s)\n",
            d->apns_tls, d->wns_https, d->svc_port, d->mtls ? "iPhones and PCs" : "PCs", sims);
    else
        say(d, "  started the APNs mock (:%d), the service (:%d%s) and the device simulator (%s)\n",
            d->apns_tls, d->svc_port, d->mtls ? ", TLS: iPhones present client certificates" : "",
            sims);
    double enrol_s = 0;
    if (!wait_enrolled(d, &enrol_s))
        return CLI_EXIT_FAIL;
    /* Each part's CPU so far: what enrolment cost (start-up included);
     * then the same at the inventory's start, the campaign's start and
     * end, and the run's end (phase_json). */
    phase_mark start_mark = {0}, enrol_mark = {0}, inv_mark = {0}, camp_mark = {0},
               camp_end_mark = {0}, end_mark = {0};
    mark_phase(d, &enrol_mark);
    const esim_proc_usage *enrol_use = enrol_mark.use;
    say(d,
        "  %u devices enrolled in %.1f s (iPhones: Authenticate, TokenUpdate; PCs: a first "
        "OMA-DM session that told their EID and WNS channel%s)\n",
        d->devices, enrol_s,
        d->iot_devices ? "; IoT devices: registered with the eIM from the manufacturer's "
                         "association list (EID, association token)"
                       : "");
    demo_dev *devs = NULL;
    if (!collect_devices(d, &devs))
        return CLI_EXIT_FAIL;
    size_t n = d->devices;
    int rc = CLI_EXIT_FAIL;
    json_t *created = NULL, *sum = NULL, *verified = NULL;
    json_t *iot_created = NULL, *iot_sum = NULL, *main_sum = NULL;
    if (!start_smdp(d, devs, n))
        goto out;
    say(d, "  started the SM-DP+ (:%d) with %zu released orders, one per EID\n", d->smdp_port, n);
    if (!import_files(d, devs, n))
        goto out;
    mark_phase(d, &inv_mark);
    if (d->inventory)
        inventory(d, devs, n);

    esim_proc_usage svc_use;
    bool svc_up = sup_usage(&d->sup, "service", &svc_use);
    d->service_rss_before_kb = svc_use.rss_kb;
    say(d, "\n== campaign: restrictions profile, RefreshCellularPlans, verify (%s)\n",
        d->iot_devices ? "the iPhones and PCs, group " DEMO_GROUP : "all devices");
    if (d->windows_share > 0)
        say(d, "  (Windows PCs: eUICCs CSP Policies/LocalUIEnabled, DownloadServers/{SM-DP+} with "
               "AutoEnable, then Profiles/{ICCID}/State read back)\n");
    static const char *const steps[] = {"profile", "refresh", "verify"};
    if (d->iot_devices && !make_group(d, devs, n))
        goto out;
    /* Each part's CPU over the campaign alone (the inventory and
     * enrolment before it not counted): what the campaign's seconds used. */
    mark_phase(d, &camp_mark);
    const esim_proc_usage *camp_use0 = camp_mark.use, *camp_use1 = camp_end_mark.use;
    int64_t t0 = esim_mono_ms();
    json_t *body = campaign_body(d, "demo roll-out",
                                 d->iot_devices ? json_pack("{s:s}", "group", DEMO_GROUP)
                                                : json_pack("{s:b}", "all", 1),
                                 steps, 3, true);
    /* With two instances: created on the second, which drives it, and
     * followed on the first, which the IPAs and every other session of a
     * PC talk to: their answers reach the instance that does not drive the
     * campaign. */
    if (!post_json(d, d->instances > 1 ? &d->api2 : &d->api, "/v1/campaigns", body, 201, &created))
        goto out;
    show_warnings(d, created);
    if (d->iot_devices) {
        /* The IoT devices' own campaign, at the same time: the eIM queues
         * a download trigger (activation code 1$SM-DP+: what the operator
         * released for the EID), then enable + list profiles. With two
         * instances it is created on (driven by) the second, the IPAs
         * poll the first. */
        static const char *const iot_steps[] = {"refresh", "verify"};
        say(d,
            "  and one for the %u IoT devices through the eIM: a download trigger (activation "
            "code), then enable and list profiles, each package signed for its eUICC\n",
            d->iot_devices);
        if (!post_json(d, d->instances > 1 ? &d->api2 : &d->api, "/v1/campaigns",
                       campaign_body(d, "demo IoT roll-out", json_pack("{s:s}", "platform", "iot"),
                                     iot_steps, 2, false),
                       201, &iot_created))
            goto out;
    }
    if (campaign_follow(&d->api, jstr(created, "id"), d->timeout_s + 30, false, &sum) !=
            CLI_EXIT_OK ||
        sup_stopping())
        goto out;
    if (iot_created && (campaign_follow(&d->api, jstr(iot_created, "id"), d->timeout_s + 30, true,
                                        &iot_sum) != CLI_EXIT_OK ||
                        sup_stopping()))
        goto out;
    double secs = (double)(esim_mono_ms() - t0) / 1000.0;
    mark_phase(d, &camp_end_mark);
    if (d->n_inventory_cmds && inventory_answered_now(d, &d->inventory_answered_all) &&
        d->inventory_folded)
        say(d, "  inventory: %ld iPhones answered DeviceInformation in all\n",
            d->inventory_answered_all);
    counts_from_driver(d, jstr(created, "id"), sum);
    if (iot_created)
        counts_from_driver(d, jstr(iot_created, "id"), iot_sum);
    sup_usage(&d->sup, "service", &svc_use);
    d->service_rss_after_kb = svc_use.rss_kb;
    /* Both campaigns as one fleet in the table and the summary. */
    main_sum = sum;
    sum = merge_summaries(main_sum, iot_sum);
    print_table(d, sum, secs);
    long pcs_failed_as_made = 0, pcs_made_to_fail = 0, pcs = 0;
    for (size_t i = 0; i < n; i++) {
        pcs += devs[i].windows;
        pcs_made_to_fail += devs[i].windows && devs[i].fault != FAULT_NONE;
    }
    long no_esim_hw = count_no_esim(d, jstr(created, "id"), devs, n, &pcs_failed_as_made);
    if (no_esim_hw)
        say(d, "  %-26s %10ld   (failed with 36002: no eSIM hardware; they cannot be verified)\n",
            "models without eSIM", no_esim_hw);
    if (pcs_made_to_fail)
        say(d,
            "  %-26s %10ld   (%ld of %ld failed with DiscoveryState 4: their order was not "
            "released, or never made, on the SM-DP+)\n",
            "PCs without a profile", pcs_made_to_fail, pcs_failed_as_made, pcs_made_to_fail);
    long iot_made_to_fail = 0, iot_failed = 0, iot_tried = 0, iot_switched = 0;
    bool iot_ok = true;
    for (size_t i = 0; i < n; i++)
        iot_made_to_fail += devs[i].iot && devs[i].fault != FAULT_NONE;
    if (iot_created) {
        char why[400] = "";
        iot_failed = iot_failed_as_made(d, jstr(iot_created, "id"), devs, n, why, sizeof why);
        if (iot_made_to_fail)
            say(d,
                "  %-26s %10ld   (%ld of %ld failed with the SM-DP+'s reason: their order was "
                "not released, or never made; e.g. \"%s\")\n",
                "IoT devices w/o a profile", iot_made_to_fail, iot_failed, iot_made_to_fail, why);
        say(d, "\n== IoT profile switch through the eIM: download a second profile, enable it, "
               "enable the first again\n");
        iot_ok = iot_switch(d, devs, n, jstr(iot_created, "id"), &iot_tried, &iot_switched);
    }

    sample_diagnosis(d, jstr(created, "id"));
    size_t erased = 0, still = 0;
    bool del_blocked = false, xfer_blocked = false, extras_ok = true;
    char path[200];
    snprintf(path, sizeof path, "/v1/campaigns/%s/devices?state=verified&limit=200",
             jstr(created, "id"));
    if (d->extras && call(d, &d->api, "GET", path, NULL, NULL, 0, 200, &verified)) {
        say(d, "\n== restrictions against the user: allowESIMModification, "
               "allowESIMOutgoingTransfers\n");
        extras_ok &=
            user_actions(d, json_object_get(verified, "devices"), &del_blocked, &xfer_blocked);
        say(d, "\n== wipe keeping the eSIM: EraseDevice PreserveDataPlan, re-enrolment, verify\n");
        extras_ok &= erase_keep_esim(d, json_object_get(verified, "devices"), &erased, &still);
    }

    long win_sessions[2] = {-1, -1}, takeovers = 0;
    if (d->instances > 1) {
        static const char sessions[] = "esim_mdm_windows_sessions_total{event=\"started\"}",
                          taken[] = "esim_mdm_campaign_takeovers_total";
        win_sessions[0] = metric_of(&d->api, sessions);
        win_sessions[1] = metric_of(&d->api2, sessions);
        if (pcs > 0)
            say(d, "  %-26s %10ld + %ld   (on the first + the second instance)\n",
                "PC OMA-DM sessions", win_sessions[0], win_sessions[1]);
        long t1 = metric_of(&d->api, taken), t2 = metric_of(&d->api2, taken);
        takeovers = (t1 > 0 ? t1 : 0) + (t2 > 0 ? t2 : 0);
        if (takeovers)
            say(d,
                "  %-26s %10ld   (a holder did not renew a campaign's lease within 4 s: the "
                "pushes and commands above are the last holder's only)\n",
                "campaign lease takeovers", takeovers);
    }
    say(d, "\n== resources (peak resident memory, CPU time)\n");
    /* Measured just before they are stopped. */
    mark_phase(d, &end_mark);
    const esim_proc_usage *use = end_mark.use;
    for (size_t k = 0; k < N_CHILDREN; k++) {
        if (!end_mark.ok[k])
            continue;
        say(d, "  %-10s %8.1f MiB  %6.1f s CPU  (%.2f KiB per device)%s\n", child_names[k],
            (double)use[k].peak_rss_kb / 1024.0, use[k].cpu_s,
            (double)use[k].peak_rss_kb / (double)n,
            strcmp(child_names[k], "devsim") == 0 && d->sims > 1 ? "  (its processes summed)" : "");
        for (unsigned i = 0; strcmp(child_names[k], "devsim") == 0 && d->sims > 1 && i < d->sims;
             i++)
            say(d, "    %-8s %8.1f MiB  %6.1f s CPU\n", sim_names[i],
                (double)end_mark.sim_use[i].peak_rss_kb / 1024.0, end_mark.sim_use[i].cpu_s);
    }
    double campaign_kib = (double)jint(sum, "memory_bytes") / 1024.0 / (double)n;
    say(d,
        "  the campaign holds %.0f bytes per device in the service (%.1f MiB for %zu devices);\n"
        "  the service's resident memory grew by %.2f KiB per device during it\n",
        campaign_kib * 1024.0, (double)jint(sum, "memory_bytes") / 1048576.0, n,
        svc_up && d->service_rss_before_kb > 0
            ? (double)(d->service_rss_after_kb - d->service_rss_before_kb) / (double)n
            : 0.0);

    const json_t *c = json_object_get(sum, "counts");
    long total = jint(sum, "devices"), ver = jint(c, "verified");
    /* Every device that can take an eSIM must be verified; the models
     * without eSIM hardware (36002) cannot, and must say so. */
    long verifiable = total - no_esim_hw - pcs_made_to_fail - iot_made_to_fail;
    bool all = ver == verifiable && total == (long)n &&
               jint(c, "failed") == no_esim_hw + pcs_made_to_fail + iot_made_to_fail &&
               pcs_failed_as_made == pcs_made_to_fail && iot_failed == iot_made_to_fail && iot_ok;
    double total_s = (double)(esim_mono_ms() - t_start) / 1000.0;
    say(d,
        "\n%s: %ld of %ld devices that can take an eSIM verified (%ld iPhones, %ld Windows PCs, "
        "%ld IoT devices) in %.1f s (whole demo %.1f s)%s\n",
        all && extras_ok ? "OK" : "NOT OK", ver, verifiable,
        jint(json_object_get(json_object_get(sum, "by_platform"), "apple"), "verified"),
        jint(json_object_get(json_object_get(sum, "by_platform"), "windows"), "verified"),
        jint(json_object_get(json_object_get(sum, "by_platform"), "iot"), "verified"), secs,
        total_s,
        d->extras ? (extras_ok ? "; erase-keep-eSIM and user-action restrictions as expected"
                               : "; the erase or user-action demonstration did not go as expected")
                  : "");
    if (d->json) {
        json_t *j = json_pack(
            "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:I, s:{s:I, s:I}, "
            "s:{s:b, s:b}, s:b}",
            "devices", (json_int_t)total, "verified", (json_int_t)ver, "unverified",
            (json_int_t)jint(c, "unverified"), "failed", (json_int_t)jint(c, "failed"), "timed_out",
            (json_int_t)jint(c, "timed_out"), "canceled", (json_int_t)jint(c, "canceled"),
            "refresh_acknowledged", (json_int_t)jint(sum, "refresh_acknowledged"), "pushes",
            (json_int_t)jint(sum, "pushes"), "commands", (json_int_t)jint(sum, "commands"),
            "duration_s", secs, "pushes_per_s", secs > 0 ? (double)jint(sum, "pushes") / secs : 0.0,
            "commands_per_s", secs > 0 ? (double)jint(sum, "commands") / secs : 0.0, "total_s",
            total_s, "warnings", (json_int_t)jint(created, "warnings_total"), "erase_keep_esim",
            "devices", (json_int_t)erased, "still_verified", (json_int_t)still, "user_actions",
            "delete_esim_blocked", del_blocked, "transfer_esim_blocked", xfer_blocked, "ok",
            all && extras_ok);
        json_object_set_new(j, "cannot_take_esim", json_integer(no_esim_hw));
        json_object_set_new(j, "device_auth", json_string(d->mtls ? "mtls" : "signature"));
        json_object_set_new(j, "verifiable", json_integer(verifiable));
        const json_t *bp = json_object_get(sum, "by_platform");
        const json_t *wp = json_object_get(bp, "windows"), *ap = json_object_get(bp, "apple");
        json_object_set_new(j, "windows",
                            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "devices",
                                      (json_int_t)pcs, "verified", (json_int_t)jint(wp, "verified"),
                                      "failed", (json_int_t)jint(wp, "failed"), "unverified",
                                      (json_int_t)jint(wp, "unverified"), "timed_out",
                                      (json_int_t)jint(wp, "timed_out"), "made_to_fail",
                                      (json_int_t)pcs_made_to_fail, "failed_as_made",
                                      (json_int_t)pcs_failed_as_made));
        const json_t *ip = json_object_get(bp, "iot");
        json_object_set_new(
            j, "iot",
            json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I}}", "devices",
                      (json_int_t)d->iot_devices, "verified", (json_int_t)jint(ip, "verified"),
                      "failed", (json_int_t)jint(ip, "failed"), "unverified",
                      (json_int_t)jint(ip, "unverified"), "timed_out",
                      (json_int_t)jint(ip, "timed_out"), "made_to_fail",
                      (json_int_t)iot_made_to_fail, "failed_as_made", (json_int_t)iot_failed,
                      "profile_switch", "devices", (json_int_t)iot_tried, "switched_and_back",
                      (json_int_t)iot_switched));
        if (d->instances > 1)
            json_object_set_new(j, "lease_takeovers", json_integer(takeovers));
        if (d->instances > 1 && pcs > 0)
            /* Each instance's OMA-DM sessions: the PCs' sessions spread. */
            json_object_set_new(
                json_object_get(j, "windows"), "sessions_by_instance",
                json_pack("[I, I]", (json_int_t)win_sessions[0], (json_int_t)win_sessions[1]));
        json_object_set_new(j, "iphones",
                            json_pack("{s:I, s:I, s:I}", "devices",
                                      (json_int_t)(total - pcs - (long)d->iot_devices), "verified",
                                      (json_int_t)jint(ap, "verified"), "failed",
                                      (json_int_t)jint(ap, "failed")));
        /* The simulator's iPhones: its session places (--max-concurrent,
         * 128 in each process, summed over them), its check-ins, and those
         * that waited in its queue for a place (queued while every place
         * was taken): a device the campaign counts in flight may be
         * waiting there rather than working. */
        json_t *ss = NULL;
        if (sim_stats(d, &ss)) {
            json_object_set_new(j, "sim_max_concurrent", json_integer(jint(ss, "max_concurrent")));
            json_object_set_new(j, "sim_checkins", json_integer(jint(ss, "checkins")));
            json_object_set_new(j, "sim_checkins_waited",
                                json_integer(jint(ss, "checkins_waited")));
            /* The simulator's TLS handshakes (every server) and its
             * devices' downloads, beside the SM-DP+'s handshakes: how many
             * each download cost it. */
            json_t *tls = json_object_get(ss, "tls");
            if (tls)
                json_object_set(j, "sim_tls", tls);
            json_object_set_new(
                j, "sim_downloads",
                json_integer(jint(ss, "downloads_ok") + jint(ss, "downloads_failed") +
                             jint(json_object_get(ss, "windows"), "downloads_ok") +
                             jint(json_object_get(ss, "windows"), "downloads_failed") +
                             jint(json_object_get(ss, "iot"), "downloads_ok") +
                             jint(json_object_get(ss, "iot"), "downloads_failed")));
        }
        json_decref(ss);
        json_t *os = NULL;
        if (call(d, &d->smdp, "GET", "/admin/orders?summary=1", NULL, NULL, 0, 200, &os) &&
            json_object_get(os, "tls"))
            json_object_set(j, "smdp_tls", json_object_get(os, "tls"));
        json_decref(os);
        json_object_set_new(j, "inventory_s", json_real(d->inventory_s));
        json_object_set_new(j, "inventory_answered", json_integer(d->inventory_answered));
        json_object_set_new(j, "inventory_not_now", json_integer(d->inventory_not_now));
        json_object_set_new(j, "inventory_woken", json_integer(d->inventory_woken));
        json_object_set_new(j, "inventory_folded", json_integer(d->inventory_folded));
        json_object_set_new(j, "inventory_peak_in_flight",
                            json_integer(d->inventory_peak_in_flight));
        json_object_set_new(j, "inventory_answered_in_all",
                            json_integer(d->inventory_answered_all));
        json_object_set_new(j, "service_campaign_kib_per_device", json_real(campaign_kib));
        json_object_set_new(j, "enrol_s", json_real(enrol_s));
        json_object_set_new(j, "enrolments_per_s",
                            json_real(enrol_s > 0 ? (double)n / enrol_s : 0.0));
        double campaign_cpu = 0;
        for (size_t k = 0; j && k < sizeof child_names / sizeof child_names[0]; k++) {
            if (!sup_started(&d->sup, child_names[k]))
                continue;
            char key[64];
            snprintf(key, sizeof key, "%s_peak_rss_kb", child_names[k]);
            json_object_set_new(j, key, json_integer(use[k].peak_rss_kb));
            snprintf(key, sizeof key, "%s_cpu_s", child_names[k]);
            json_object_set_new(j, key, json_real(use[k].cpu_s));
            snprintf(key, sizeof key, "%s_enrol_cpu_s", child_names[k]);
            json_object_set_new(j, key, json_real(enrol_use[k].cpu_s));
            double camp_cpu = camp_use1[k].cpu_s - camp_use0[k].cpu_s;
            snprintf(key, sizeof key, "%s_campaign_cpu_s", child_names[k]);
            json_object_set_new(j, key, json_real(camp_cpu > 0 ? camp_cpu : 0.0));
            campaign_cpu += camp_cpu > 0 ? camp_cpu : 0.0;
        }
        /* The devsim_* figures above are every simulator process's summed
         * (peak memory: the sum of each one's peak); each one's here. */
        json_object_set_new(j, "devsim_processes", json_integer(d->sims));
        json_t *per = json_array();
        for (unsigned i = 0; per && i < d->sims; i++) {
            double camp_cpu = camp_end_mark.sim_use[i].cpu_s - camp_mark.sim_use[i].cpu_s;
            json_array_append_new(per, json_pack("{s:s, s:I, s:f, s:f, s:f}", "name", sim_names[i],
                                                 "peak_rss_kb",
                                                 (json_int_t)end_mark.sim_use[i].peak_rss_kb,
                                                 "cpu_s", end_mark.sim_use[i].cpu_s, "enrol_cpu_s",
                                                 enrol_mark.sim_use[i].cpu_s, "campaign_cpu_s",
                                                 camp_cpu > 0 ? camp_cpu : 0.0));
            /* The pushes each one received: for its own devices, and
             * for none of them (stray: another's, or a wiped device's). */
            json_t *ps = NULL;
            if (call(d, &d->sim[i], "GET", "/stats", NULL, NULL, 0, 200, &ps)) {
                json_t *o = json_array_get(per, i), *w = json_object_get(ps, "windows");
                json_object_set_new(o, "devices", json_integer(jint(ps, "devices")));
                json_object_set_new(o, "pushes", json_integer(jint(ps, "pushes")));
                json_object_set_new(o, "stray_pushes", json_integer(jint(ps, "stray_pushes")));
                json_object_set_new(o, "wns_pushes", json_integer(jint(w, "wns_pushes")));
                json_object_set_new(o, "stray_wns_pushes",
                                    json_integer(jint(w, "stray_wns_pushes")));
            }
            json_decref(ps);
        }
        json_object_set_new(j, "devsim_per_process", per);
        /* How many of the machine's cores the parts used while the
         * campaign ran (its CPU seconds over duration_s). */
        json_object_set_new(j, "campaign_cpu_s", json_real(campaign_cpu));
        json_object_set_new(j, "campaign_cores", json_real(secs > 0 ? campaign_cpu / secs : 0.0));
        /* Each phase's CPU per part and the simulator's counts in it: what
         * happens between enrolment and the campaign (issue 17). */
        json_object_set_new(j, "phases",
                            json_pack("{s:o, s:o, s:o, s:o, s:o}", "enrol",
                                      phase_json(d, &start_mark, &enrol_mark), "prepare",
                                      phase_json(d, &enrol_mark, &inv_mark), "inventory",
                                      phase_json(d, &inv_mark, &camp_mark), "campaign",
                                      phase_json(d, &camp_mark, &camp_end_mark), "after",
                                      phase_json(d, &camp_end_mark, &end_mark)));
        char *t = j ? json_dumps(j, JSON_COMPACT) : NULL;
        if (t)
            printf("%s\n", t);
        free(t);
        json_decref(j);
    }
    rc = all && extras_ok ? CLI_EXIT_OK : CLI_EXIT_FAIL;
out:
    json_decref(created);
    json_decref(sum);
    json_decref(verified);
    json_decref(iot_created);
    json_decref(iot_sum);
    json_decref(main_sum);
    free(devs);
    return rc;
}

/* The campaign's expiry when --timeout is not given: 300 s, or 20 ms per
 * device beyond 15,000 devices (2,000 s at 100,000), so that a large fleet
 * is not cut off by a constant. The goal is 0.6 ms per device (100,000 in
 * 60 s); a campaign on a quiet two-core machine took 6 ms per device at
 * 10,000, and a loaded one several times that. */
static double demo_default_timeout_s(unsigned devices)
{
    double s = (double)devices * 0.02;
    return s > 300 ? s : 300;
}

int cmd_demo(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(demo_help, stdout);
        return CLI_EXIT_OK;
    }
    demo d = {.devices = 1000,
              .pps = 5000,
              .max_in_flight = 500,
              .seed = 7,
              .windows_share = 0.2,
              .iot_share = 0.1,
              .inventory = true,
              .inventory_wait_s = 15,
              .extras = true,
              .instances = 1,
              .sims = DEMO_DEFAULT_SIMS};
    const char *keep = NULL;
    bool sample = false;
    enum {
        SAMPLE,
        JSON,
        QUIET_MIX,
        NO_INVENTORY,
        NO_EXTRAS,
        KEEP_RUNNING,
        DEVICES,
        PPS,
        MAX_IN_FLIGHT,
        TIMEOUT,
        ENROL_TIMEOUT,
        INVENTORY_WAIT,
        SEED,
        WINDOWS_SHARE,
        IOT_SHARE,
        KEEP,
        STORE,
        INSTANCES,
        DEVICE_AUTH,
        SIM_PROCESSES
    };
    static const cli_option options[] = {
        {"sample", false, SAMPLE},
        {"json", false, JSON},
        {"quiet-mix", false, QUIET_MIX},
        {"no-inventory", false, NO_INVENTORY},
        {"no-extras", false, NO_EXTRAS},
        {"keep-running", false, KEEP_RUNNING},
        {"devices", true, DEVICES},
        {"pushes-per-second", true, PPS},
        {"max-in-flight", true, MAX_IN_FLIGHT},
        {"timeout", true, TIMEOUT},
        {"enrol-timeout", true, ENROL_TIMEOUT},
        {"inventory-wait", true, INVENTORY_WAIT},
        {"seed", true, SEED},
        {"windows-share", true, WINDOWS_SHARE},
        {"iot-share", true, IOT_SHARE},
        {"keep", true, KEEP},
        {"store", true, STORE},
        {"instances", true, INSTANCES},
        {"device-auth", true, DEVICE_AUTH},
        {"sim-processes", true, SIM_PROCESSES},
        {NULL, false, 0},
    };
    /* The numbers' ranges, by id. */
    static const struct {
        double lo, hi;
        const char *what;
    } range[] = {[DEVICES] = {1, 10000000, "a number from 1 to 10000000"},
                 [PPS] = {1, 1e7, "a number from 1 to 10000000"},
                 [MAX_IN_FLIGHT] = {0, 1e7, "a number from 0 to 10000000"},
                 [TIMEOUT] = {1, 86400, "seconds from 1 to 86400"},
                 [ENROL_TIMEOUT] = {1, 86400, "seconds from 1 to 86400"},
                 [INVENTORY_WAIT] = {0, 86400, "seconds from 0 to 86400"},
                 [SEED] = {0, 4e9, "a number from 0 to 4000000000"},
                 [WINDOWS_SHARE] = {0, 1, "a share from 0 to 1"},
                 [IOT_SHARE] = {0, 1, "a share from 0 to 1"}};
    cli_parser p;
    cli_parser_init(&p, "demo", options, argc, argv, 1);
    for (int c; (c = cli_next(&p)) != CLI_END;) {
        double x = 0;
        if (c >= DEVICES && c <= IOT_SHARE &&
            !cli_parse_double(p.value, range[c].lo, range[c].hi, &x))
            return cli_bad_value(&p, range[c].what);
        switch (c) {
        case SAMPLE:
            sample = true;
            break;
        case JSON:
            d.json = true;
            break;
        case QUIET_MIX:
            d.quiet_mix = true;
            break;
        case NO_INVENTORY:
            d.inventory = false;
            break;
        case NO_EXTRAS:
            d.extras = false;
            break;
        case KEEP_RUNNING:
            d.keep_running = true;
            break;
        case DEVICES:
            d.devices = (unsigned)x;
            break;
        case PPS:
            d.pps = x;
            break;
        case MAX_IN_FLIGHT:
            d.max_in_flight = (unsigned)x;
            break;
        case TIMEOUT:
            d.timeout_s = x;
            break;
        case ENROL_TIMEOUT:
            d.enrol_timeout_s = x;
            break;
        case INVENTORY_WAIT:
            d.inventory_wait_s = x;
            break;
        case SEED:
            d.seed = (unsigned)x;
            break;
        case WINDOWS_SHARE:
            d.windows_share = x;
            break;
        case IOT_SHARE:
            d.iot_share = x;
            break;
        case KEEP:
            keep = p.value;
            break;
        case STORE:
            d.store = p.value;
            break;
        case INSTANCES:
            if (strcmp(p.value, "1") != 0 && strcmp(p.value, "2") != 0)
                return cli_bad_value(&p, "1 or 2");
            d.instances = (unsigned)atoi(p.value);
            break;
        case SIM_PROCESSES:
            if (strlen(p.value) != 1 || p.value[0] < '1' || p.value[0] > '0' + DEMO_MAX_SIMS)
                return cli_bad_value(&p, "1 to 4");
            d.sims = (unsigned)(p.value[0] - '0');
            break;
        case DEVICE_AUTH:
            if (strcmp(p.value, "mtls") != 0 && strcmp(p.value, "signature") != 0)
                return cli_bad_value(&p, "signature or mtls");
            d.mtls = strcmp(p.value, "mtls") == 0;
            break;
        case CLI_ARG:
            return cli_unexpected("demo", p.value);
        default:
            return CLI_EXIT_USAGE;
        }
    }
    if (sample)
        return demo_print_sample();
    if (d.timeout_s <= 0)
        d.timeout_s = demo_default_timeout_s(d.devices);
    if (d.instances > 1 && (!d.store || (strncmp(d.store, "postgres://", 11) != 0 &&
                                         strncmp(d.store, "postgresql://", 13) != 0)))
        return cli_usage_error("demo: --instances 2 needs --store postgres://...: several "
                               "instances share one PostgreSQL, never a SQLite file");
    if (d.windows_share + d.iot_share > 1.0)
        return cli_usage_error("demo: --windows-share and --iot-share add up to more than 1");
    /* The fleet's parts, rounded as the simulator rounds: PCs and IoT
     * devices are shares of --devices, the rest iPhones. */
    d.windows_pcs = (unsigned)(d.devices * d.windows_share + 0.5);
    d.iot_devices = (unsigned)(d.devices * d.iot_share + 0.5);
    if (d.iot_devices > d.devices - d.windows_pcs)
        d.iot_devices = d.devices - d.windows_pcs;
    if (d.iot_devices == d.devices)
        return cli_usage_error("demo: the fleet needs at least one iPhone or PC besides the IoT "
                               "devices (lower --iot-share)");
    /* Each simulator process at least one iPhone or PC. */
    if (d.sims > d.devices - d.iot_devices)
        d.sims = d.devices - d.iot_devices;
    /* With --json, standard output is the summary object alone: what
     * people read goes to standard error. */
    d.out = d.json ? stderr : stdout;
    if (!sup_init(&d.sup, "esim-mdm demo"))
        return CLI_EXIT_FAIL;
    d.sup.dir = d.dir;
    if (keep) {
        esim_error e = {{0}};
        if (esim_mkdirs(keep, 0700, &e) != ESIM_OK || !realpath(keep, d.dir)) {
            fprintf(stderr, "esim-mdm demo: --keep %s: %s\n", keep,
                    e.msg[0] ? e.msg : strerror(errno));
            return CLI_EXIT_USAGE;
        }
        d.keep = true;
    } else {
        const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        snprintf(d.dir, sizeof d.dir, "%s/esim-mdm-demo-XXXXXX", tmp);
        if (!mkdtemp(d.dir)) {
            fprintf(stderr, "esim-mdm demo: cannot make a temporary directory in %s: %s\n", tmp,
                    strerror(errno));
            return CLI_EXIT_FAIL;
        }
    }
    sup_catch_signals();

    int rc = run(&d);
    if (d.keep_running && d.svc_port > 0 && !sup_stopping()) {
        say(&d,
            "\nkept running: the dashboard is at %s://127.0.0.1:%d/dashboard/ (admin key in "
            "%s/service/api-token, read-only key in %s/read-only-key%s); Ctrl-C stops every "
            "part\n",
            service_on_tls(&d) ? "https" : "http", d.svc_port, d.dir, d.dir,
            service_on_tls(&d) ? "; the service's certificate is from the test CA, pki/ca.pem"
                               : "");
        while (!sup_stopping())
            pause();
    }

    sup_stop_all(&d.sup);
    free(d.inventory_cmds);
    chttp_close(&d.api);
    chttp_close(&d.api2);
    for (unsigned i = 0; i < DEMO_MAX_SIMS; i++)
        chttp_close(&d.sim[i]);
    chttp_close(&d.smdp);
    if (rc != CLI_EXIT_OK && !d.keep && !sup_stopping())
        fprintf(stderr, "esim-mdm demo: rerun with --keep DIR to keep the parts' logs\n");
    if (!d.keep)
        nftw(d.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    sup_restore_signals();
    if (sup_stopping()) {
        fprintf(stderr, "\nesim-mdm demo: stopped by signal %d; everything it started is stopped\n",
                sup_stop_signal());
        return 128 + sup_stop_signal();
    }
    return rc;
}
