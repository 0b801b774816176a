/*
 * rig.c — the crash and fault tests' system on loopback (rig.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <sys/wait.h>

#include "core/esim.h"
#include "core/internal.h"
#include "crash/rig.h"
#include "tests/ports.h"

static const char *const part_names[] = {"service", "devsim", "smdp", "apns-mock"};

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    static int64_t t0;
    if (!t0)
        t0 = esim_mono_ms();
    fprintf(stderr, "[rig %6.1f s] ", (double)(esim_mono_ms() - t0) / 1000.0);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
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

/* One call answered |want|; *out may be NULL. Quiet when |quiet|. */
static bool call(chttp *c, const char *method, const char *path, const char *ctype,
                 const char *body, size_t len, long want, json_t **out, bool quiet)
{
    long status = 0;
    json_t *j = NULL;
    esim_error e = {{0}};
    if (chttp_call(c, method, path, ctype, body, body ? len : 0, &status, &j, &e) != ESIM_OK ||
        status != want) {
        if (!quiet)
            note("%s %s: %ld %s", method, path, status, e.msg[0] ? e.msg : chttp_error_message(j));
        json_decref(j);
        if (out)
            *out = NULL;
        return false;
    }
    if (out)
        *out = j;
    else
        json_decref(j);
    return true;
}

static void path_in(const rig *r, char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", r->dir, name);
}

/* ---- the parts ----------------------------------------------------------------------- */

/*
 * The ports of the parts a test kills and starts again on the same port
 * (the service, the device simulator's status port, the SM-DP+, whose URL
 * the campaign carries) are taken below the kernel's ephemeral range
 * (tests/ports.h: else the restart could fail with "cannot listen ... in
 * use"), from a random start (not rand(): ESIM_CRASH_SEED repeats the
 * kills); an ephemeral port, as before, when the range leaves no room
 * below it.
 */

static bool wait_apns_ports(rig *r)
{
    char path[PATH_MAX + 64];
    path_in(r, path, sizeof path, "apns-mock.log");
    r->apns_tls = r->apns_delivery = 0;
    for (int64_t until = esim_mono_ms() + 60000; esim_mono_ms() < until;) {
        if (!sup_alive(&r->sup))
            return false;
        esim_buf b = {0};
        if (esim_read_file(path, 1 << 20, &b, NULL) == ESIM_OK && b.len) {
            /* The last start's line: a restart appends to the log. */
            const char *p = NULL;
            for (const char *q = (const char *)b.data; (q = strstr(q, "{\"listening\"")); q++)
                p = q;
            const char *nl = p ? strchr(p, '\n') : NULL;
            json_t *j = nl ? json_loadb(p, (size_t)(nl - p), 0, NULL) : NULL;
            json_t *l = json_object_get(j, "listening");
            r->apns_tls = (int)json_integer_value(json_object_get(l, "tls"));
            r->apns_delivery = (int)json_integer_value(json_object_get(l, "delivery"));
            json_decref(j);
        }
        esim_buf_free(&b);
        if (r->apns_tls > 0 && r->apns_delivery > 0)
            return true;
        sup_sleep_ms(20);
    }
    note("the APNs mock did not start");
    sup_show_log_tail(&r->sup, "apns-mock");
    return false;
}

static bool start_apns(rig *r)
{
    char pki[PATH_MAX + 32], cert[PATH_MAX + 48], key[PATH_MAX + 48], ca[PATH_MAX + 48];
    path_in(r, pki, sizeof pki, "pki");
    snprintf(cert, sizeof cert, "%s/server.pem", pki);
    snprintf(key, sizeof key, "%s/server.key", pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", pki);
    char *argv[32] = {"esim-mdm",    "apns-mock", "--listen",          "127.0.0.1:0",
                      "--tls-cert",  cert,        "--tls-key",         key,
                      "--client-ca", ca,          "--delivery-listen", "127.0.0.1:0"};
    int n = 12;
    for (int i = 0; i < r->n_apns_extra && n < 30; i++)
        argv[n++] = r->apns_extra[i];
    argv[n] = NULL;
    return sup_start(&r->sup, "apns-mock", argv) > 0 && wait_apns_ports(r);
}

static bool wait_port(rig *r, const char *name, int *port)
{
    return sup_wait_port_file(&r->sup, name, 120000, port);
}

static void remove_port_file(rig *r, const char *name)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s.port", r->dir, name);
    unlink(path);
}

/* Instance |k| (0: "service", 1: "service2"). */
static bool start_instance(rig *r, int which)
{
    const char *name = which ? "service2" : "service";
    int *port = which ? &r->svc2_port : &r->svc_port;
    chttp *api = which ? &r->api2 : &r->api;
    char port_file[PATH_MAX + 32], data[PATH_MAX + 32], devca[PATH_MAX + 48], push[PATH_MAX + 48],
        pushkey[PATH_MAX + 48], ca[PATH_MAX + 48], apns[64], listen[64], hook[64];
    char pf_name[32];
    snprintf(pf_name, sizeof pf_name, "%s.port", name);
    path_in(r, port_file, sizeof port_file, pf_name);
    path_in(r, data, sizeof data, name);
    snprintf(devca, sizeof devca, "%s/pki/device-ca.pem", r->dir);
    snprintf(push, sizeof push, "%s/pki/push.pem", r->dir);
    snprintf(pushkey, sizeof pushkey, "%s/pki/push.key", r->dir);
    snprintf(ca, sizeof ca, "%s/pki/ca.pem", r->dir);
    snprintf(apns, sizeof apns, "https://127.0.0.1:%d", r->apns_tls);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", *port);
    snprintf(hook, sizeof hook, "http://127.0.0.1:%d/hook", hook_sink_port(r->hooks));
    char *argv[] = {"esim-mdm",
                    "serve",
                    "--listen",
                    listen,
                    "--port-file",
                    port_file,
                    "--data-dir",
                    data,
                    "--device-ca",
                    devca,
                    "--apns",
                    apns,
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
                    "--webhook",
                    hook,
                    r->store ? "--store" : NULL,
                    (char *)r->store,
                    NULL};
    remove_port_file(r, name);
    pid_t pid;
    if (r->valgrind) {
        /* valgrind runs the binary: the same arguments after its own. */
        char self[PATH_MAX], logopt[PATH_MAX + 64];
        snprintf(self, sizeof self, "%s", r->sup.self);
        snprintf(r->valgrind_log, sizeof r->valgrind_log, "%s/valgrind.log", r->dir);
        snprintf(logopt, sizeof logopt, "--log-file=%s", r->valgrind_log);
        char *vargv[64] = {"valgrind",
                           "--error-exitcode=99",
                           "--leak-check=full",
                           "--show-leak-kinds=definite",
                           "--errors-for-leak-kinds=definite",
                           "--num-callers=30",
                           logopt,
                           self};
        size_t k = 8;
        for (size_t i = 1; argv[i] && k < 63; i++)
            vargv[k++] = argv[i];
        vargv[k] = NULL;
        snprintf(r->sup.self, sizeof r->sup.self, "%s", r->valgrind);
        pid = sup_start(&r->sup, "service", vargv);
        snprintf(r->sup.self, sizeof r->sup.self, "%s", self);
    } else {
        pid = sup_start(&r->sup, name, argv);
    }
    if (pid < 0 || !wait_port(r, name, port))
        return false;
    char url[64], token[PATH_MAX + 48];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", *port);
    snprintf(token, sizeof token, "%s/%s/api-token", r->dir, name);
    chttp_close(api);
    if (!chttp_open_api(api, url, token))
        return false;
    for (int64_t until = esim_mono_ms() + 180000; esim_mono_ms() < until; sup_sleep_ms(50))
        if (call(api, "GET", "/healthz", NULL, NULL, 0, 200, NULL, true))
            return true;
    note("the service does not answer /healthz");
    return false;
}

static bool start_service(rig *r)
{
    return start_instance(r, 0) && (r->instances < 2 || start_instance(r, 1));
}

bool rig_kill_first_instance(rig *r)
{
    if (!sup_kill(&r->sup, "service", SIGKILL))
        return false;
    chttp_close(&r->api);
    r->api = r->api2;
    memset(&r->api2, 0, sizeof r->api2);
    return true;
}

static bool start_devsim(rig *r)
{
    char port_file[PATH_MAX + 32], data[PATH_MAX + 32], pki[PATH_MAX + 32], url[64], url2[64],
        n[16], apns[64], status[64];
    path_in(r, port_file, sizeof port_file, "devsim.port");
    path_in(r, data, sizeof data, "devsim");
    path_in(r, pki, sizeof pki, "pki");
    snprintf(url, sizeof url, "http://127.0.0.1:%d", r->svc_port);
    snprintf(url2, sizeof url2, "http://127.0.0.1:%d", r->svc2_port);
    snprintf(n, sizeof n, "%u", r->devices);
    snprintf(apns, sizeof apns, "http://127.0.0.1:%d", r->apns_delivery);
    snprintf(status, sizeof status, "127.0.0.1:%d", r->sim_port);
    char *argv[] = {"esim-mdm",
                    "devsim",
                    "--server",
                    url,
                    "--apns-mock",
                    apns,
                    "--devices",
                    n,
                    "--pki",
                    pki,
                    "--seed",
                    "11",
                    "--data-dir",
                    data,
                    "--status-listen",
                    status,
                    "--status-port-file",
                    port_file,
                    "--max-concurrent",
                    "128",
                    r->instances > 1 ? "--server" : NULL,
                    url2,
                    NULL};
    remove_port_file(r, "devsim");
    if (sup_start(&r->sup, "devsim", argv) < 0 || !wait_port(r, "devsim", &r->sim_port))
        return false;
    char sim_url[64];
    snprintf(sim_url, sizeof sim_url, "http://127.0.0.1:%d", r->sim_port);
    chttp_close(&r->sim);
    chttp_open_plain(&r->sim, sim_url, NULL);
    return true;
}

static bool start_smdp(rig *r, bool first)
{
    char port_file[PATH_MAX + 32], data[PATH_MAX + 32], pki[PATH_MAX + 32], orders[PATH_MAX + 32],
        listen[64];
    path_in(r, port_file, sizeof port_file, "smdp.port");
    path_in(r, data, sizeof data, "smdp");
    path_in(r, pki, sizeof pki, "pki");
    path_in(r, orders, sizeof orders, "orders.csv");
    snprintf(listen, sizeof listen, "127.0.0.1:%d", r->smdp_port);
    /* The orders come from the CSV once; from then on from its data. */
    char *argv[] = {"esim-mdm",
                    "smdp",
                    "--pki",
                    pki,
                    "--listen",
                    listen,
                    "--port-file",
                    port_file,
                    "--data-dir",
                    data,
                    first ? "--orders" : NULL,
                    orders,
                    NULL};
    remove_port_file(r, "smdp");
    if (sup_start(&r->sup, "smdp", argv) < 0 || !wait_port(r, "smdp", &r->smdp_port))
        return false;
    char url[64], ca[PATH_MAX + 48], token_path[PATH_MAX + 64];
    snprintf(url, sizeof url, "https://127.0.0.1:%d", r->smdp_port);
    snprintf(ca, sizeof ca, "%s/pki/ca.pem", r->dir);
    chttp_close(&r->smdp);
    chttp_open_plain(&r->smdp, url, ca);
    snprintf(token_path, sizeof token_path, "%s/pki/smdp-admin-token", r->dir);
    esim_buf tok = {0};
    if (esim_read_file(token_path, sizeof r->smdp.token, &tok, NULL) == ESIM_OK)
        snprintf(r->smdp.token, sizeof r->smdp.token, "%.*s",
                 (int)strcspn((const char *)tok.data, "\r\n"), (const char *)tok.data);
    esim_buf_free(&tok);
    /* Its orders are on disk before anything may kill it. */
    char saved[PATH_MAX + 48];
    snprintf(saved, sizeof saved, "%s/orders.json", data);
    for (int64_t until = esim_mono_ms() + 30000; esim_mono_ms() < until; sup_sleep_ms(20))
        if (access(saved, R_OK) == 0)
            return true;
    note("the SM-DP+ did not write its orders");
    return false;
}

/* ---- set-up ------------------------------------------------------------------------------ */

static int cmp_udid(const void *a, const void *b)
{
    return strcmp(((const rig_dev *)a)->udid, ((const rig_dev *)b)->udid);
}

static bool wait_enrolled(rig *r)
{
    long enrolled = 0;
    for (int64_t until = esim_mono_ms() + 300000; esim_mono_ms() < until; sup_sleep_ms(100)) {
        if (!sup_alive(&r->sup))
            return false;
        json_t *s = NULL;
        if (call(&r->sim, "GET", "/stats", NULL, NULL, 0, 200, &s, true))
            enrolled = jint(s, "enrolled_now");
        json_decref(s);
        if (enrolled >= (long)r->devices)
            return true;
    }
    note("only %ld of %u devices enrolled", enrolled, r->devices);
    return false;
}

static bool collect_devices(rig *r)
{
    json_t *s = NULL;
    if (!call(&r->sim, "GET", "/devices", NULL, NULL, 0, 200, &s, false))
        return false;
    json_t *arr = json_object_get(s, "devices");
    size_t n = json_array_size(arr);
    r->devs = calloc(n ? n : 1, sizeof *r->devs);
    if (!r->devs || n != r->devices) {
        json_decref(s);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        snprintf(r->devs[i].udid, sizeof r->devs[i].udid, "%s", jstr(v, "udid"));
        snprintf(r->devs[i].eid, sizeof r->devs[i].eid, "%s", jstr(v, "eid"));
        snprintf(r->devs[i].iccid, sizeof r->devs[i].iccid, "89440000%010u0", (unsigned)(i + 1));
        esim_iccid_set_check_digit(r->devs[i].iccid, NULL);
    }
    json_decref(s);
    qsort(r->devs, n, sizeof *r->devs, cmp_udid);
    char after[80] = "";
    size_t found = 0;
    for (;;) {
        char path[200];
        snprintf(path, sizeof path, "/v1/devices?limit=1000%s%s", after[0] ? "&after=" : "", after);
        json_t *d = NULL;
        if (!call(&r->api, "GET", path, NULL, NULL, 0, 200, &d, false))
            return false;
        size_t k;
        json_t *v;
        json_array_foreach(json_object_get(d, "devices"), k, v)
        {
            rig_dev key;
            snprintf(key.udid, sizeof key.udid, "%s", jstr(v, "udid"));
            rig_dev *hit = bsearch(&key, r->devs, n, sizeof *r->devs, cmp_udid);
            if (hit && !hit->serial[0]) {
                snprintf(hit->serial, sizeof hit->serial, "%s", jstr(v, "serial_number"));
                found++;
            }
        }
        snprintf(after, sizeof after, "%s", jstr(d, "next_after"));
        json_decref(d);
        if (!after[0])
            break;
    }
    if (found != n)
        note("the service knows %zu of %zu devices", found, n);
    return found == n;
}

static bool write_text(rig *r, const char *name, const esim_buf *b)
{
    char path[PATH_MAX + 64];
    path_in(r, path, sizeof path, name);
    return esim_write_file_atomic(path, b->data, b->len, 0600, NULL) == ESIM_OK;
}

static bool import_files(rig *r)
{
    esim_buf orders = {0}, manifest = {0}, codes = {0};
    esim_buf_append_str(&manifest, "serial,eid\n");
    for (unsigned i = 0; i < r->devices; i++) {
        const rig_dev *d = &r->devs[i];
        esim_buf_printf(&orders, "%s,%s,CRASH-%06u\n", d->eid, d->iccid, i + 1);
        esim_buf_printf(&manifest, "%s,%s\n", d->serial, d->eid);
        esim_buf_printf(&codes, "%s,LPA:1$127.0.0.1$CRASH-%06u,%s\n", d->eid, i + 1, d->iccid);
    }
    bool ok = write_text(r, "orders.csv", &orders);
    /* Both files stay well under the service's 1 MiB body limit at the
     * device counts these tests use. */
    json_t *j = NULL;
    ok = ok && call(&r->api, "POST", "/v1/import/eids", "text/csv", (const char *)manifest.data,
                    manifest.len, 200, &j, false);
    if (ok && jint(j, "matched") != (long)r->devices) {
        note("the manifest matched %ld devices", jint(j, "matched"));
        ok = false;
    }
    json_decref(j);
    ok = ok && call(&r->api, "POST", "/v1/import/activation-codes", "text/plain",
                    (const char *)codes.data, codes.len, 200, NULL, false);
    esim_buf_free(&orders);
    esim_buf_free(&manifest);
    esim_buf_free(&codes);
    return ok;
}

bool rig_start(rig *r, unsigned devices)
{
    /* The release binary when there is one (make test builds it): the
     * sanitizers' cost would make thousands of devices too slow here, and
     * the ASan build runs every other test. */
    const char *bin = getenv("ESIM_CRASH_BIN");
    if (!bin || access(bin, X_OK) != 0)
        bin = getenv("ESIM_MDM_BIN");
    if (!bin) {
        note("ESIM_MDM_BIN is not set (run the test through ctest)");
        return false;
    }
    r->devices = devices;
    const char *tmp = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(r->dir, sizeof r->dir, "%s/esim-crash-XXXXXX", tmp);
    if (!mkdtemp(r->dir) || !sup_init(&r->sup, "crash rig"))
        return false;
    snprintf(r->sup.self, sizeof r->sup.self, "%s", bin);
    r->sup.dir = r->dir;
    signal(SIGPIPE, SIG_IGN);
    char pki[PATH_MAX + 32];
    path_in(r, pki, sizeof pki, "pki");
    esim_error e = {{0}};
    if (esim_pki_create(pki, &e) != ESIM_OK) {
        note("PKI: %s", e.msg);
        return false;
    }
    note("parts from %s", bin);
    int *restartable[] = {&r->svc_port, &r->svc2_port, &r->sim_port, &r->smdp_port};
    for (size_t i = 0; i < sizeof restartable / sizeof *restartable; i++)
        for (int tries = 0; !*restartable[i] && tries < 8; tries++) {
            int port = test_port_below_ephemeral(1); /* and not another part's */
            for (size_t k = 0; port && k < i; k++)
                port = *restartable[k] == port ? 0 : port;
            *restartable[i] = port;
            if (!port && tries == 7)
                note("no free port below the ephemeral range: an ephemeral one");
        }
    r->hooks = hook_sink_start();
    if (!r->hooks || !start_apns(r) || !start_service(r) || !start_devsim(r) || !wait_enrolled(r) ||
        !collect_devices(r) || !import_files(r) || !start_smdp(r, true))
        return false;
    note("%u devices enrolled; service :%d, devsim :%d, SM-DP+ :%d, webhooks :%d", devices,
         r->svc_port, r->sim_port, r->smdp_port, hook_sink_port(r->hooks));
    return true;
}

bool rig_create_campaign(rig *r)
{
    char smdp[64];
    snprintf(smdp, sizeof smdp, "https://127.0.0.1:%d", r->smdp_port);
    /* Quick re-pushes: a device whose check-in failed while a part was
     * down waits for the next push, and the test should not wait long. */
    json_t *b = json_pack(
        "{s:s, s:{s:b}, s:[s,s,s], s:s, s:{s:s, s:s, s:s}, s:{s:f, s:f, s:f, s:f, s:f, s:i, "
        "s:i, s:i}}",
        "name", "crash test", "target", "all", 1, "steps", "profile", "refresh", "verify",
        "smdp_url", smdp, "policy", "esim_modification", "deny", "preserve_esim_on_erase", "on",
        "esim_outgoing_transfers", "deny", "settings", "pushes_per_second", 2000.0,
        "repush_after_s", 3.0, "expiry_s", 3600.0, "retry_base_s", 0.5, "retry_max_s", 4.0,
        "max_retries", 30, "verify_attempts", 5, "max_in_flight", 400);
    char *text = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    json_t *created = NULL;
    bool ok = text && call(&r->api, "POST", "/v1/campaigns", NULL, text, strlen(text), 201,
                           &created, false);
    free(text);
    if (ok)
        snprintf(r->campaign, sizeof r->campaign, "%s", jstr(created, "id"));
    json_decref(created);
    return ok;
}

json_t *rig_campaign_summary(rig *r)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/campaigns/%s?limit=0", r->campaign);
    json_t *s = NULL;
    call(&r->api, "GET", path, NULL, NULL, 0, 200, &s, true);
    return s;
}

bool rig_kill(rig *r, rig_part part)
{
    return sup_kill(&r->sup, part_names[part], SIGKILL);
}

bool rig_restart(rig *r, rig_part part)
{
    r->restarts[part]++;
    switch (part) {
    case RIG_SERVICE:
        return start_service(r);
    case RIG_DEVSIM:
        return start_devsim(r);
    case RIG_SMDP:
        return start_smdp(r, false);
    case RIG_APNS:
        return false; /* its ports would change under the service */
    }
    return false;
}

bool rig_kill_restart(rig *r, rig_part part)
{
    return rig_kill(r, part) && rig_restart(r, part);
}

long rig_finals(const json_t *s)
{
    const json_t *c = json_object_get(s, "counts");
    return jint(c, "verified") + jint(c, "done") + jint(c, "unverified") + jint(c, "failed") +
           jint(c, "timed_out") + jint(c, "canceled");
}

bool rig_follow(rig *r, double max_s, int n_kills, rig_part part, int *kills_during)
{
    *kills_during = 0;
    /* Thresholds spread over 5%..85% of the devices, a little jitter each. */
    long thresholds[32];
    if (n_kills > 32)
        n_kills = 32;
    for (int k = 0; k < n_kills; k++) {
        double f = 0.05 + 0.80 * ((double)k + (double)(rand() % 100) / 100.0) / n_kills;
        thresholds[k] = (long)(f * r->devices);
    }
    int next = 0;
    int64_t until = esim_mono_ms() + (int64_t)(max_s * 1000);
    long last = -1;
    while (esim_mono_ms() < until) {
        if (!sup_alive(&r->sup))
            return false;
        json_t *s = rig_campaign_summary(r);
        if (!s) {
            sup_sleep_ms(200);
            continue;
        }
        long f = rig_finals(s);
        bool finished = strcmp(jstr(s, "state"), "finished") == 0;
        json_decref(s);
        if (f != last && f / 200 != last / 200)
            note("%ld of %u devices final", f, r->devices);
        last = f;
        if (finished)
            return true;
        if (next < n_kills && f >= thresholds[next]) {
            /* A random moment after the threshold: up to 300 ms. */
            sup_sleep_ms(rand() % 300);
            note("SIGKILL %s at %ld of %u devices final", part_names[part], f, r->devices);
            if (!rig_kill_restart(r, part))
                return false;
            /* Hundreds of devices were still to finish when it was killed:
             * the campaign cannot have finished within those 300 ms. */
            (*kills_during)++;
            next++;
            continue;
        }
        sup_sleep_ms(100);
    }
    note("the campaign did not finish within %.0f s", max_s);
    return false;
}

bool rig_wait_finished(rig *r, double max_s)
{
    int dummy;
    return rig_follow(r, max_s, 0, RIG_SERVICE, &dummy);
}

/* ---- the checks ---------------------------------------------------------------------------- */

/* The metric |name| from /metrics (-1 when not found). */
static double metric(rig *r, const char *name)
{
    long status = 0;
    esim_buf b = {0};
    double v = -1;
    if (chttp_request(&r->api, "GET", "/metrics", NULL, NULL, 0, &status, &b, NULL) == ESIM_OK &&
        status == 200 && b.len) {
        esim_buf_append(&b, "", 1);
        size_t nl = strlen(name);
        for (const char *p = (const char *)b.data; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
            if (strncmp(p, name, nl) == 0 && p[nl] == ' ') {
                v = atof(p + nl + 1);
                break;
            }
    }
    esim_buf_free(&b);
    return v;
}

static int cmp_event(const void *a, const void *b)
{
    const hook_event *x = a, *y = b;
    int c = strcmp(x->udid, y->udid);
    if (!c)
        c = strcmp(x->topic, y->topic);
    if (!c)
        c = strcmp(x->command_uuid, y->command_uuid);
    if (!c)
        c = strcmp(x->status, y->status);
    if (!c)
        c = strcmp(x->event_id, y->event_id);
    return c;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(((const hook_event *)a)->event_id, ((const hook_event *)b)->event_id);
}

/* Deliveries for (udid, topic, command, status): a range in the sorted array. */
static size_t count_hooks(const hook_event *ev, size_t n, const char *udid, const char *topic,
                          const char *cmd, const char *status)
{
    hook_event key;
    memset(&key, 0, sizeof key);
    snprintf(key.udid, sizeof key.udid, "%s", udid);
    snprintf(key.topic, sizeof key.topic, "%s", topic);
    snprintf(key.command_uuid, sizeof key.command_uuid, "%s", cmd);
    snprintf(key.status, sizeof key.status, "%s", status);
    /* lower bound on (udid, topic, cmd, status, "") */
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cmp_event(&ev[mid], &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t k = 0;
    while (lo + k < n && strcmp(ev[lo + k].udid, udid) == 0 &&
           strcmp(ev[lo + k].topic, topic) == 0 && strcmp(ev[lo + k].command_uuid, cmd) == 0 &&
           strcmp(ev[lo + k].status, status) == 0)
        k++;
    return k;
}

static const char *status_name(const char *detail)
{
    return detail;
}

/* Each device the campaign did not verify, with its state, step and reason
 * (the first 20 of each final state other than done): a rare failure then
 * tells its story in the test's output. */
static void note_unverified(rig *r)
{
    static const char *const states[] = {"unverified", "failed", "timed_out", "canceled"};
    for (size_t k = 0; k < sizeof states / sizeof *states; k++) {
        char path[200];
        snprintf(path, sizeof path, "/v1/campaigns/%s/devices?state=%s&limit=20", r->campaign,
                 states[k]);
        json_t *page = NULL;
        if (!call(&r->api, "GET", path, NULL, NULL, 0, 200, &page, false))
            continue;
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(page, "devices"), i, v)
        {
            note("FAIL: %s %s at step %s after %ld pushes: %s", jstr(v, "udid"), states[k],
                 jstr(v, "step"), jint(v, "pushes"), jstr(v, "reason"));
        }
        json_decref(page);
    }
}

bool rig_check(rig *r, rig_report *rep)
{
    memset(rep, 0, sizeof *rep);
    bool ok = true;
    json_t *s = rig_campaign_summary(r);
    const json_t *c = json_object_get(s, "counts");
    rep->verified = jint(c, "verified");
    if (rep->verified != (long)r->devices) {
        char *counts = c ? json_dumps(c, JSON_COMPACT) : NULL;
        note("FAIL: %ld of %u devices verified (%s)", rep->verified, r->devices,
             counts ? counts : "no summary");
        free(counts);
        ok = false;
        note_unverified(r);
    }
    json_decref(s);

    /* The SM-DP+: every order downloaded once and installed. */
    json_t *o = NULL;
    if (!call(&r->smdp, "GET", "/admin/orders", NULL, NULL, 0, 200, &o, false))
        return false;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(o, "orders"), i, v)
    {
        long d = jint(v, "downloads");
        rep->download_retries += jint(v, "retries");
        if (d > rep->downloads_max)
            rep->downloads_max = d;
        if (d > 1) {
            note("FAIL: order %s (EID %s) downloaded %ld times", jstr(v, "iccid"), jstr(v, "eid"),
                 d);
            ok = false;
        }
        /* Installed once the install notification arrived; Downloaded when
         * it is still pending on the eUICC (the device sends it later). */
        if (strcasecmp(jstr(v, "state"), "installed") == 0)
            rep->orders_installed++;
        else if (strcasecmp(jstr(v, "state"), "downloaded") != 0) {
            note("FAIL: order %s (EID %s) is %s", jstr(v, "iccid"), jstr(v, "eid"),
                 jstr(v, "state"));
            ok = false;
        }
    }
    json_decref(o);

    /* The webhooks still waiting go out before the comparison. */
    for (int64_t until = esim_mono_ms() + 120000;
         esim_mono_ms() < until && metric(r, "esim_mdm_webhooks_pending") != 0;)
        sup_sleep_ms(100);
    size_t nh = 0;
    hook_event *ev = hook_sink_events(r->hooks, &nh);
    rep->webhooks = (long)nh;
    /* The same event delivered twice carries the same event id. */
    qsort(ev, nh, sizeof *ev, cmp_id);
    for (size_t k = 1; k < nh; k++)
        if (strcmp(ev[k].event_id, ev[k - 1].event_id) == 0) {
            rep->webhook_dups_same_id++;
            if (cmp_event(&ev[k], &ev[k - 1]) != 0) {
                note("FAIL: event id %s names two different events", ev[k].event_id);
                ok = false;
            }
        }
    qsort(ev, nh, sizeof *ev, cmp_event);

    /* The ledger of every device: each command answered exactly once, and
     * a webhook for every check-in and answer it recorded. */
    for (unsigned d = 0; d < r->devices; d++) {
        const char *udid = r->devs[d].udid;
        char path[300];
        json_t *page = NULL;
        snprintf(path, sizeof path, "/v1/devices/%s/events?limit=1000", udid);
        if (!call(&r->api, "GET", path, NULL, NULL, 0, 200, &page, false)) {
            ok = false;
            break;
        }
        json_t *events = json_object_get(page, "events");
        if (json_is_integer(json_object_get(page, "next_after")))
            note("note: %s has more than 1000 ledger events", udid);
        size_t n_ev = json_array_size(events);
        long sent = 0, authn = 0, tokens = 0;
        for (size_t k = 0; k < n_ev; k++) {
            json_t *e = json_array_get(events, k);
            const char *kind = jstr(e, "kind");
            const char *cmd = jstr(e, "command_uuid");
            rep->events_checked++;
            if (strcmp(kind, "sent") == 0)
                sent++;
            else if (strcmp(kind, "authenticate") == 0)
                authn++;
            else if (strcmp(kind, "token_update") == 0)
                tokens++;
            if (strcmp(kind, "sent") == 0) {
                long times = 0;
                for (size_t q = 0; q < k; q++) {
                    json_t *x = json_array_get(events, q);
                    times += strcmp(jstr(x, "kind"), "sent") == 0 &&
                             strcmp(jstr(x, "command_uuid"), cmd) == 0;
                }
                rep->resent += times == 1; /* counted once, at its second sending */
            }
            if (strcmp(kind, "result") != 0)
                continue;
            rep->results++;
            /* exactly one result per command on this device */
            long same = 0;
            for (size_t q = 0; q < n_ev; q++) {
                json_t *x = json_array_get(events, q);
                same += strcmp(jstr(x, "kind"), "result") == 0 &&
                        strcmp(jstr(x, "command_uuid"), cmd) == 0;
            }
            if (same != 1) {
                note("FAIL: %s: command %s has %ld results in the ledger", udid, cmd, same);
                ok = false;
            }
            if (!count_hooks(ev, nh, udid, "mdm.Connect", cmd, status_name(jstr(e, "detail")))) {
                if (rep->webhook_lost < 5)
                    note("FAIL: no webhook for %s's %s answer to %s", udid, jstr(e, "detail"), cmd);
                rep->webhook_lost++;
                ok = false;
            }
        }
        long hooks_auth = (long)count_hooks(ev, nh, udid, "mdm.Authenticate", "", "");
        long hooks_tok = (long)count_hooks(ev, nh, udid, "mdm.TokenUpdate", "", "");
        if (hooks_auth < authn || hooks_tok < tokens) {
            if (rep->webhook_lost < 5)
                note("FAIL: %s: %ld Authenticate and %ld TokenUpdate in the ledger, %ld and %ld "
                     "webhooks",
                     udid, authn, tokens, hooks_auth, hooks_tok);
            rep->webhook_lost += (authn - hooks_auth > 0 ? authn - hooks_auth : 0) +
                                 (tokens - hooks_tok > 0 ? tokens - hooks_tok : 0);
            ok = false;
        }
        json_decref(page);
    }
    free(ev);
    note("%ld verified; %ld ledger events read, %ld results; %ld webhooks received (%ld "
         "repeated with the same event id), %ld lost; orders: %ld installed, at most %ld "
         "download(s) each, %ld download retries, %ld commands sent more than once",
         rep->verified, rep->events_checked, rep->results, rep->webhooks, rep->webhook_dups_same_id,
         rep->webhook_lost, rep->orders_installed, rep->downloads_max, rep->download_retries,
         rep->resent);
    return ok;
}

int rig_stop_service(rig *r, double max_s)
{
    pid_t pid = 0;
    int slot = -1;
    for (int i = 0; i < r->sup.n_kids; i++)
        if (strcmp(r->sup.kids[i].name, "service") == 0 && r->sup.kids[i].pid > 0) {
            pid = r->sup.kids[i].pid;
            slot = i;
        }
    if (!pid)
        return -1;
    kill(pid, SIGTERM);
    for (int64_t until = esim_mono_ms() + (int64_t)(max_s * 1000); esim_mono_ms() < until;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            r->sup.kids[slot].pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        sup_sleep_ms(100);
    }
    return -1;
}

void rig_stop(rig *r)
{
    sup_stop_all(&r->sup);
    chttp_close(&r->api);
    chttp_close(&r->api2);
    chttp_close(&r->sim);
    chttp_close(&r->smdp);
    hook_sink_stop(r->hooks);
    r->hooks = NULL;
    free(r->devs);
    r->devs = NULL;
    if (r->dir[0] && !getenv("ESIM_CRASH_KEEP")) {
        char cmd[PATH_MAX + 32];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", r->dir);
        if (system(cmd) != 0)
            note("could not remove %s", r->dir);
    } else if (r->dir[0]) {
        note("kept %s", r->dir);
    }
}
