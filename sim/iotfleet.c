/*
 * iotfleet.c — the IoT devices of a devsim run: each a virtual eUICC with an
 * IPA (ipa.c) associated with the eIM at creation (AddInitialEim), the
 * association list sent to the eIM's admin API (POST /v1/iot/devices) as a
 * manufacturer would, then a poll cycle per device every poll interval
 * (±10% jitter) on its own libevent timer, at most max_concurrent at once
 * (a batch of the list the service did not take, for want of an answer or
 * with a 429 or 5xx, is sent again a second later);
 * a share of the devices stays offline for a while, a share fails every
 * download.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/internal.h"
#include "sim/sim_internal.h"

#define REGISTER_BATCH 1000
#define BUSY_RETRY_MS 50
#define REGISTER_RETRY_MS 1000
#define IOT_INDEX_BASE 5000000u /* IoT EIDs come from indices far from the phones' */
/* A device that polls at least this often keeps its connection to the eIM
 * between cycles (the service lets an idle one go after 60 s); one that
 * polls less often connects for each cycle, resuming its TLS session. */
#define KEEP_CONNECTION_POLL_MS 5000

typedef struct {
    sim_iotfleet *f;
    size_t i;
    sim_euicc *e;
    sim_ipa *ipa;
    struct event *timer;
    long token;
    bool fresh; /* made in this run (its counter starts at 0) */
    bool offline;
    bool fail;
} iot_slot;

struct sim_iotfleet {
    sim_iotfleet_config cfg;
    char eim_url[600], eim_fqdn[300], api_url[600], auth[600], data_dir[SIM_PATH_MAX];
    iot_slot *slots;
    size_t n, active;
    uint64_t rng;
    size_t registered_next; /* the next slot to send to the admin API */
    size_t batch_start;     /* the first slot of the batch on its way */
    struct event *reg_retry;
    bool registering;
    sim_iotfleet_stats st;
    esim_buf eim_der; /* eim.pem as DER, read once for every new device */
};

static uint64_t mix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void arm(iot_slot *sl, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(sl->timer, &tv);
}

static int64_t poll_ms_of(const sim_iotfleet *f)
{
    return f->cfg.poll_ms ? f->cfg.poll_ms : 60000;
}

/* The poll interval with ±10% jitter. */
static int64_t next_poll_ms(sim_iotfleet *f)
{
    int64_t p = poll_ms_of(f);
    int64_t span = p / 5;
    return p - p / 10 + (span > 0 ? (int64_t)(mix(&f->rng) % (uint64_t)span) : 0);
}

static void on_poll_done(void *arg, const sim_ipa_poll_result *r)
{
    iot_slot *sl = arg;
    sim_iotfleet *f = sl->f;
    f->active--;
    f->st.polls += r->polls;
    f->st.cycles++;
    f->st.packages_ok += r->packages_ok;
    f->st.packages_refused += r->packages_refused;
    f->st.package_errors += r->package_errors;
    f->st.data_requests += r->data_requests;
    f->st.downloads_ok += r->downloads_ok;
    f->st.downloads_failed += r->downloads_failed;
    f->st.acknowledged += r->acknowledged;
    if (r->err != ESIM_OK)
        f->st.cycle_errors++;
    if (f->data_dir[0] && sim_euicc_dirty(sl->e)) {
        char path[SIM_PATH_MAX + 80];
        snprintf(path, sizeof path, "%s/iot/%s.json", f->data_dir, sim_euicc_eid(sl->e));
        sim_euicc_save(sl->e, path, NULL);
    }
    arm(sl, next_poll_ms(f));
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    iot_slot *sl = arg;
    sim_iotfleet *f = sl->f;
    if (sl->offline) {
        /* back from its time away: it polls from now on */
        sl->offline = false;
        f->st.offline_now--;
    }
    if (f->active >= (f->cfg.max_concurrent ? f->cfg.max_concurrent : 64)) {
        arm(sl, BUSY_RETRY_MS + (int64_t)(mix(&f->rng) % BUSY_RETRY_MS));
        return;
    }
    f->active++;
    if (sim_ipa_poll(sl->ipa, on_poll_done, sl, NULL) != ESIM_OK) {
        f->active--;
        arm(sl, next_poll_ms(f));
    }
}

/* ---- registration with the eIM (its admin API) -------------------------------------------- */

static void register_next(sim_iotfleet *f);

static void on_register_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    register_next(arg);
}

/* The batch from batch_start goes again in a second. */
static void register_again(sim_iotfleet *f)
{
    f->registered_next = f->batch_start;
    if (!f->reg_retry && !(f->reg_retry = evtimer_new(f->cfg.base, on_register_retry, f)))
        return;
    struct timeval tv = {REGISTER_RETRY_MS / 1000, (REGISTER_RETRY_MS % 1000) * 1000};
    evtimer_add(f->reg_retry, &tv);
}

static void on_registered(void *arg, sim_http_response *r)
{
    sim_iotfleet *f = arg;
    f->registering = false;
    if (r->err != ESIM_OK || r->status == 429 || r->status >= 500) {
        /* Not taken (no answer, busy, or the service's trouble): the
         * manufacturer sends the batch again. */
        f->st.register_errors++;
        register_again(f);
        return;
    }
    json_t *j = r->err == ESIM_OK && r->status == 200
                    ? json_loadb((const char *)r->body.data, r->body.len, 0, NULL)
                    : NULL;
    json_t *lines = json_object_get(j, "devices");
    size_t k;
    json_t *line;
    json_array_foreach(lines, k, line)
    {
        const char *res = json_string_value(json_object_get(line, "result"));
        if (res && strcmp(res, "registered") == 0)
            f->st.registered++;
        else if (res && strcmp(res, "exists") == 0)
            f->st.already_registered++;
        else
            f->st.register_errors++;
    }
    if (!json_is_array(lines))
        f->st.register_errors++;
    json_decref(j);
    register_next(f);
}

/* Sends the next batch of the association list: EID, token and, for an
 * eUICC made in this run, counter 0. */
static void register_next(sim_iotfleet *f)
{
    if (!f->api_url[0] || f->registering || f->registered_next >= f->n)
        return;
    json_t *devs = json_array();
    f->batch_start = f->registered_next;
    size_t end = f->registered_next + REGISTER_BATCH;
    for (; f->registered_next < f->n && f->registered_next < end; f->registered_next++) {
        iot_slot *sl = &f->slots[f->registered_next];
        json_t *d = json_pack("{s:s, s:I}", "eid", sim_euicc_eid(sl->e), "association_token",
                              (json_int_t)sl->token);
        if (d && sl->fresh)
            json_object_set_new(d, "counter", json_integer(0));
        json_array_append_new(devs, d);
    }
    json_t *body = json_pack("{s:o}", "devices", devs);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    const char *headers[] = {"Content-Type: application/json", f->auth};
    sim_http_request req = {.method = "POST",
                            .url = f->api_url,
                            .headers = headers,
                            .n_headers = f->auth[0] ? 2 : 1,
                            .body = text,
                            .body_len = text ? strlen(text) : 0,
                            .ca_file = f->cfg.ca_file};
    f->registering = true;
    if (!text || sim_http_send(f->cfg.http, &req, on_registered, f, NULL) != ESIM_OK) {
        f->registering = false;
        f->st.register_errors++;
        register_again(f);
    }
    free(text);
}

/* ---- the fleet ---------------------------------------------------------------------------- */

esim_err sim_iotfleet_new(const sim_iotfleet_config *cfg, size_t capacity, sim_iotfleet **out,
                          esim_error *err)
{
    if (!cfg->eim_url ||
        (strncmp(cfg->eim_url, "http://", 7) != 0 && strncmp(cfg->eim_url, "https://", 8) != 0))
        return esim_fail(err, ESIM_EINVAL, "IoT devices need the eIM's http(s):// URL");
    if (!(cfg->offline_share >= 0 && cfg->offline_share <= 1 && cfg->fail_share >= 0 &&
          cfg->fail_share <= 1 && cfg->indirect_share >= 0 && cfg->indirect_share <= 1))
        return esim_fail(err, ESIM_EINVAL, "shares must be between 0 and 1");
    sim_iotfleet *f = calloc(1, sizeof *f);
    if (!f || !(f->slots = calloc(capacity ? capacity : 1, sizeof *f->slots))) {
        free(f);
        return esim_fail(err, ESIM_ENOMEM, "out of memory for %zu IoT devices", capacity);
    }
    f->cfg = *cfg;
    f->rng = cfg->seed ^ 0x10710710ull;
    /* The eIM's URL as given; its FQDN (HOST:PORT) is what AddInitialEim stores. */
    const char *host = strstr(cfg->eim_url, "://") + 3;
    size_t hl = strcspn(host, "/");
    snprintf(f->eim_fqdn, sizeof f->eim_fqdn, "%.*s", (int)hl, host);
    if (host[hl] == '\0' || strcmp(host + hl, "/") == 0)
        snprintf(f->eim_url, sizeof f->eim_url, "%.*s%s", (int)(host + hl - cfg->eim_url),
                 cfg->eim_url, "/gsma/rsp2/asn1");
    else
        snprintf(f->eim_url, sizeof f->eim_url, "%s", cfg->eim_url);
    if (cfg->api_url) {
        size_t al = strlen(cfg->api_url);
        while (al > 0 && cfg->api_url[al - 1] == '/')
            al--;
        snprintf(f->api_url, sizeof f->api_url, "%.*s/v1/iot/devices", (int)al, cfg->api_url);
    }
    if (cfg->api_key)
        snprintf(f->auth, sizeof f->auth, "Authorization: Bearer %s", cfg->api_key);
    if (cfg->data_dir && cfg->data_dir[0]) {
        snprintf(f->data_dir, sizeof f->data_dir, "%s", cfg->data_dir);
        char d[SIM_PATH_MAX + 8];
        snprintf(d, sizeof d, "%s/iot", f->data_dir);
        esim_err rc = esim_mkdirs(d, 0700, err);
        if (rc != ESIM_OK) {
            sim_iotfleet_free(f);
            return rc;
        }
    }
    *out = f;
    return ESIM_OK;
}

/* The eIM's certificate (DER) from the test PKI, read at the first new
 * device and kept for the others (every IPA hands its eUICC the same one). */
static esim_err eim_cert(sim_iotfleet *f, esim_buf *out, esim_error *err)
{
    if (!f->eim_der.len) {
        char path[SIM_PATH_MAX + 16];
        snprintf(path, sizeof path, "%s/eim.pem", f->cfg.pki_dir);
        FILE *fp = fopen(path, "r");
        X509 *x = fp ? PEM_read_X509(fp, NULL, NULL, NULL) : NULL;
        if (fp)
            fclose(fp);
        unsigned char *der = NULL;
        int n = x ? i2d_X509(x, &der) : -1;
        X509_free(x);
        esim_err rc = n > 0 ? esim_buf_append(&f->eim_der, der, (size_t)n)
                            : esim_fail(err, ESIM_ECRYPTO, "no eIM certificate in %s", path);
        OPENSSL_free(der);
        if (rc != ESIM_OK) {
            esim_buf_free(&f->eim_der);
            return rc;
        }
    }
    return esim_buf_append(out, f->eim_der.data, f->eim_der.len);
}

esim_err sim_iotfleet_add(sim_iotfleet *f, unsigned i, esim_error *err)
{
    iot_slot *sl = &f->slots[f->n];
    memset(sl, 0, sizeof *sl);
    sl->f = f;
    sl->i = f->n;
    char udid[65], eid[ESIM_EID_LEN + 1], path[SIM_PATH_MAX + 80];
    sim_devsim_identity(f->cfg.seed, IOT_INDEX_BASE + i, udid, eid);
    snprintf(path, sizeof path, "%s/iot/%s.json", f->data_dir, eid);
    esim_err rc = ESIM_ENOTFOUND;
    if (f->data_dir[0])
        rc = sim_euicc_load(f->cfg.pki, path, &sl->e, err);
    if (rc == ESIM_ENOTFOUND)
        rc = sim_euicc_new(f->cfg.pki, eid, &sl->e, err);
    if (rc != ESIM_OK)
        return rc;
    const char *eim_id = f->cfg.eim_id ? f->cfg.eim_id : "esim-mdm";
    const sim_eim_info *known = sim_euicc_eim_find(sl->e, eim_id);
    if (known) {
        sl->token = (long)known->association_token;
    } else {
        /* A new device: its IPA associates the eUICC with the eIM. */
        esim_buf cert = {0};
        rc = eim_cert(f, &cert, err);
        if (rc == ESIM_OK)
            rc = sim_ipa_add_initial_eim(sl->e, eim_id, f->eim_fqdn, &cert, &sl->token, err);
        esim_buf_free(&cert);
        sl->fresh = true;
        if (rc == ESIM_OK && f->data_dir[0])
            rc = sim_euicc_save(sl->e, path, err);
    }
    sl->fail = (double)(mix(&f->rng) % 10000) / 10000.0 < f->cfg.fail_share;
    sl->offline = (double)(mix(&f->rng) % 10000) / 10000.0 < f->cfg.offline_share;
    /* Drawn only when asked for: a seed's other draws stay as they were. */
    bool indirect = f->cfg.indirect_share > 0 &&
                    (double)(mix(&f->rng) % 10000) / 10000.0 < f->cfg.indirect_share;
    sim_ipa_config ic = {.http = f->cfg.http,
                         .eim_url = f->eim_url,
                         .ca_file = f->cfg.ca_file,
                         .smdp_resolve = f->cfg.smdp_resolve,
                         .n_smdp_resolve = f->cfg.n_smdp_resolve,
                         .fail_downloads = sl->fail,
                         .indirect_downloads = indirect,
                         .keep_connection = poll_ms_of(f) <= KEEP_CONNECTION_POLL_MS};
    if (rc == ESIM_OK)
        rc = sim_ipa_new(sl->e, &ic, &sl->ipa, err);
    if (rc == ESIM_OK && !(sl->timer = evtimer_new(f->cfg.base, on_timer, sl)))
        rc = esim_fail(err, ESIM_ENOMEM, "out of memory");
    if (rc != ESIM_OK) {
        sim_ipa_free(sl->ipa);
        sim_euicc_free(sl->e);
        memset(sl, 0, sizeof *sl);
        return rc;
    }
    f->n++;
    f->st.devices++;
    /* The first poll: spread over one interval; an offline device only
     * after its time away. */
    int64_t p = poll_ms_of(f);
    int64_t first = (int64_t)(mix(&f->rng) % (uint64_t)(p > 0 ? p : 1));
    if (sl->offline) {
        f->st.offline_now++;
        first += f->cfg.offline_ms ? f->cfg.offline_ms : 3000;
    }
    arm(sl, first);
    return ESIM_OK;
}

void sim_iotfleet_start(sim_iotfleet *f)
{
    register_next(f);
}

void sim_iotfleet_free(sim_iotfleet *f)
{
    if (!f)
        return;
    if (f->reg_retry)
        event_free(f->reg_retry);
    for (size_t i = 0; i < f->n; i++) {
        iot_slot *sl = &f->slots[i];
        if (sl->timer)
            event_free(sl->timer);
        sim_ipa_free(sl->ipa);
        if (f->data_dir[0] && sim_euicc_dirty(sl->e)) {
            char path[SIM_PATH_MAX + 80];
            snprintf(path, sizeof path, "%s/iot/%s.json", f->data_dir, sim_euicc_eid(sl->e));
            sim_euicc_save(sl->e, path, NULL);
        }
        sim_euicc_free(sl->e);
    }
    free(f->slots);
    esim_buf_free(&f->eim_der);
    free(f);
}

size_t sim_iotfleet_count(const sim_iotfleet *f)
{
    return f ? f->n : 0;
}

sim_euicc *sim_iotfleet_euicc_at(sim_iotfleet *f, size_t i)
{
    return i < f->n ? f->slots[i].e : NULL;
}

long sim_iotfleet_token_at(const sim_iotfleet *f, size_t i)
{
    return i < f->n ? f->slots[i].token : 0;
}

sim_iotfleet_stats sim_iotfleet_get_stats(const sim_iotfleet *f)
{
    sim_iotfleet_stats s = {0};
    if (f)
        s = f->st;
    return s;
}
