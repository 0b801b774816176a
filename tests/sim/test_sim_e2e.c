/*
 * test_sim_e2e.c — the whole path on loopback: the real `esim-mdm serve` and
 * `esim-mdm apns-mock` as subprocesses, the SM-DP+ and 20 simulated devices
 * in this process. A restrictions profile, RefreshCellularPlans and a
 * DeviceInformation query go in through the admin API; every device must end
 * Acknowledged with its eSIM installed and enabled, the service must learn
 * each EID, and the SM-DP+ must show every order Installed exactly once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <openssl/sha.h>

#include "sim/cert_view.h"
#include "tests/sim/sim_test.h"

#define N_DEVICES 20
#define SEED 4242

static struct {
    char *dir;
    const char *bin;
    pid_t mock, svc;
    int mock_tls, mock_delivery, svc_port;
    bool mtls; /* the running service wants TLS client certificates */
    char token[128];
} fx;

/* Starts |argv| with stdout to a pipe (returned in *out_fd when not NULL)
 * and stderr to |log|. The child dies with us (PR_SET_PDEATHSIG). */
static pid_t spawn(char *const argv[], int *out_fd, const char *log)
{
    int p[2] = {-1, -1};
    if (out_fd && pipe(p) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int lf = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (lf >= 0)
            dup2(lf, 2);
        if (out_fd) {
            dup2(p[1], 1);
            close(p[0]);
            close(p[1]);
        } else if (lf >= 0) {
            dup2(lf, 1);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    if (out_fd) {
        close(p[1]);
        *out_fd = p[0];
    }
    return pid;
}

static void stop(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static bool read_line(int fd, char *buf, size_t n, int timeout_ms)
{
    size_t len = 0;
    while (len + 1 < n) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, timeout_ms) <= 0)
            return false;
        if (read(fd, buf + len, 1) != 1)
            return false;
        if (buf[len] == '\n')
            break;
        len++;
    }
    buf[len] = '\0';
    return true;
}

static bool wait_file(const char *path, esim_buf *out)
{
    for (int i = 0; i < 300; i++) {
        esim_buf_reset(out);
        if (esim_read_file(path, 4096, out, NULL) == ESIM_OK && out->len > 0 &&
            out->data[out->len - 1] == '\n')
            return true;
        usleep(50000);
    }
    return false;
}

static int setup(void **state)
{
    (void)state;
    fx.bin = getenv("ESIM_MDM_BIN");
    if (!fx.bin || access(fx.bin, X_OK) != 0) {
        fprintf(stderr, "ESIM_MDM_BIN is not set to the built esim-mdm\n");
        return -1;
    }
    fx.dir = st_tempdir();
    char pki[600], cert[700], key[700], ca[700], log[700];
    snprintf(pki, sizeof pki, "%s/pki", fx.dir);
    sim_pki *p = NULL;
    if (sim_pki_open(pki, &p, NULL) != ESIM_OK)
        return -1;
    sim_pki_free(p);

    snprintf(cert, sizeof cert, "%s/server.pem", pki);
    snprintf(key, sizeof key, "%s/server.key", pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", pki);
    snprintf(log, sizeof log, "%s/mock.log", fx.dir);
    char *margv[] = {(char *)fx.bin,
                     "apns-mock",
                     "--listen",
                     "127.0.0.1:0",
                     "--tls-cert",
                     cert,
                     "--tls-key",
                     key,
                     "--client-ca",
                     ca,
                     "--delivery-listen",
                     "127.0.0.1:0",
                     NULL};
    int fd = -1;
    fx.mock = spawn(margv, &fd, log);
    char line[512];
    bool ok = fx.mock > 0 && read_line(fd, line, sizeof line, 20000);
    if (fd >= 0)
        close(fd);
    json_t *j = ok ? json_loads(line, 0, NULL) : NULL;
    json_t *l = json_object_get(j, "listening");
    fx.mock_tls = (int)json_integer_value(json_object_get(l, "tls"));
    fx.mock_delivery = (int)json_integer_value(json_object_get(l, "delivery"));
    json_decref(j);
    if (!fx.mock_tls || !fx.mock_delivery) {
        fprintf(stderr, "apns-mock did not start (see %s)\n", log);
        return -1;
    }

    return 0;
}

/* Starts `esim-mdm serve` for one scenario: Mdm-Signature over HTTP, or
 * TLS with device identity by client certificate (mtls). */
static int start_service(bool mtls)
{
    char pki[600], ca[700], cert[700], key[700], log[700];
    snprintf(pki, sizeof pki, "%s/pki", fx.dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", pki);
    snprintf(cert, sizeof cert, "%s/server.pem", pki);
    snprintf(key, sizeof key, "%s/server.key", pki);
    char portfile[700], data[700], dca[700], apns[64], pcert[700], pkey[700];
    /* A fresh port file and store for every start: a stale port file would
     * point at the service of an earlier test. */
    static int starts;
    starts++;
    snprintf(portfile, sizeof portfile, "%s/svc-%d.port", fx.dir, starts);
    snprintf(data, sizeof data, "%s/svc-%d", fx.dir, starts);
    snprintf(dca, sizeof dca, "%s/device-ca.pem", pki);
    snprintf(apns, sizeof apns, "https://127.0.0.1:%d", fx.mock_tls);
    snprintf(pcert, sizeof pcert, "%s/push.pem", pki);
    snprintf(pkey, sizeof pkey, "%s/push.key", pki);
    snprintf(log, sizeof log, "%s/serve-%d.log", fx.dir, starts);
    char *sargv[32] = {
        (char *)fx.bin,      "serve", "--listen",    "127.0.0.1:0", "--port-file", portfile,
        "--data-dir",        data,    "--device-ca", dca,           "--apns",      apns,
        "--apns-cert",       pcert,   "--apns-key",  pkey,          "--apns-ca",   ca,
        "--not-now-backoff", "1"};
    size_t n = 20;
    if (mtls) {
        const char *more[] = {"--tls-cert", cert, "--tls-key", key, "--device-auth", "mtls"};
        for (size_t i = 0; i < 6; i++)
            sargv[n++] = (char *)more[i];
    }
    sargv[n] = NULL;
    fx.mtls = mtls;
    fx.svc = spawn(sargv, NULL, log);
    esim_buf b = {0};
    if (fx.svc <= 0 || !wait_file(portfile, &b)) {
        esim_buf_free(&b);
        fprintf(stderr, "esim-mdm serve did not start (see %s)\n", log);
        return -1;
    }
    fx.svc_port = atoi((const char *)b.data);
    char tokfile[760];
    snprintf(tokfile, sizeof tokfile, "%s/api-token", data);
    bool tok = wait_file(tokfile, &b);
    size_t len = b.len;
    while (len > 0 && (b.data[len - 1] == '\n' || b.data[len - 1] == '\r'))
        len--;
    snprintf(fx.token, sizeof fx.token, "%.*s", (int)len, (const char *)b.data);
    esim_buf_free(&b);
    return tok && fx.svc_port > 0 ? 0 : -1;
}

static int start_signature(void **state)
{
    (void)state;
    return start_service(false);
}

static int start_mtls(void **state)
{
    (void)state;
    return start_service(true);
}

static int stop_service(void **state)
{
    (void)state;
    stop(fx.svc);
    fx.svc = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    stop(fx.mock);
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

typedef struct {
    struct event_base *base;
    sim_http *http;
    sim_devsim *ds;
    sim_smdp *smdp;
} world;

static bool all_enrolled(world *w)
{
    for (size_t i = 0; i < sim_devsim_device_count(w->ds); i++)
        if (!sim_device_enrolled(sim_devsim_device_at(w->ds, i)))
            return false;
    return true;
}

static void run_ms(world *w, int ms)
{
    int64_t end = esim_mono_ms() + ms;
    while (esim_mono_ms() < end)
        event_base_loop(w->base, EVLOOP_ONCE);
}

static json_t *api(world *w, const char *method, const char *path, json_t *body, long *status)
{
    char url[512], auth[200];
    char ca[700];
    snprintf(url, sizeof url, "%s://127.0.0.1:%d%s", fx.mtls ? "https" : "http", fx.svc_port, path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", fx.token);
    snprintf(ca, sizeof ca, "%s/pki/ca.pem", fx.dir);
    const char *h[] = {auth, "Content-Type: application/json"};
    json_t *r = st_request(w->base, w->http, method, url, fx.mtls ? ca : NULL, body, h, 2, status);
    json_decref(body);
    return r;
}

/* Queues |command| for devices [first, first+count) (count 0: all). */
static char *enqueue_some(world *w, json_t *command, size_t first, size_t count)
{
    json_t *udids = json_array();
    size_t end = count ? first + count : sim_devsim_device_count(w->ds);
    for (size_t i = first; i < end; i++)
        json_array_append_new(udids, json_string(sim_device_udid(sim_devsim_device_at(w->ds, i))));
    long st;
    json_t *r = api(w, "POST", "/v1/commands",
                    json_pack("{s:o, s:o}", "udids", udids, "command", command), &st);
    if (st != 200 && st != 201) {
        char *t = r ? json_dumps(r, 0) : NULL;
        fprintf(stderr, "enqueue answered %ld: %s\n", st, t ? t : "");
        free(t);
    }
    assert_true(st == 200 || st == 201);
    char *uuid = strdup(sim_json_str(r, "command_uuid"));
    json_decref(r);
    return uuid;
}

static char *enqueue(world *w, json_t *command)
{
    return enqueue_some(w, command, 0, 0);
}

/* Polls the command until |want| devices are final (0: all); returns how many acknowledged. */
static size_t wait_final_n(world *w, const char *uuid, size_t want_n)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/commands/%s", uuid);
    for (int round = 0; round < 600; round++) {
        long st;
        json_t *r = api(w, "GET", path, NULL, &st);
        json_t *devs = json_object_get(r, "devices"), *d;
        const char *udid;
        size_t acked = 0, final = 0;
        json_object_foreach(devs, udid, d)
        {
            const char *state = sim_json_str(d, "state");
            if (state && strcmp(state, "acknowledged") == 0)
                acked++;
            if (state && (strcmp(state, "acknowledged") == 0 || strcmp(state, "error") == 0 ||
                          strcmp(state, "format_error") == 0 || strcmp(state, "expired") == 0 ||
                          strcmp(state, "canceled") == 0)) {
                final++;
                if (strcmp(state, "acknowledged") != 0) {
                    char *t = json_dumps(d, 0);
                    fprintf(stderr, "device %s: %s\n", udid, t);
                    free(t);
                }
            }
        }
        size_t total = json_object_size(devs);
        size_t want = want_n ? want_n : sim_devsim_device_count(w->ds);
        if (total == want && final == want) {
            json_decref(r);
            return acked;
        }
        if (round == 599) { /* say who is stuck, and where */
            char *t = json_dumps(devs, JSON_INDENT(1));
            fprintf(stderr, "command %s not final after the wait: %s\n", uuid, t);
            free(t);
        }
        json_decref(r);
        run_ms(w, 200);
    }
    return 0;
}

static size_t wait_final(world *w, const char *uuid)
{
    return wait_final_n(w, uuid, 0);
}

static void test_end_to_end(void **state)
{
    (void)state;
    world w = {0};
    w.base = event_base_new();
    assert_int_equal(sim_http_new(w.base, &w.http, NULL), ESIM_OK);
    char pki[600], data[600], smdp_data[600], apns[64], server[64];
    snprintf(pki, sizeof pki, "%s/pki", fx.dir);
    snprintf(data, sizeof data, "%s/devsim", fx.dir);
    snprintf(smdp_data, sizeof smdp_data, "%s/smdp", fx.dir);
    snprintf(apns, sizeof apns, "http://127.0.0.1:%d", fx.mock_delivery);
    snprintf(server, sizeof server, "http://127.0.0.1:%d", fx.svc_port);

    sim_pki *p = NULL;
    assert_int_equal(sim_pki_open(pki, &p, NULL), ESIM_OK);
    esim_error err;
    sim_smdp_config sc = {.pki = p, .data_dir = smdp_data, .admin_token = "e2e-token"};
    assert_int_equal(sim_smdp_new(w.base, &sc, &w.smdp, &err), ESIM_OK);
    /* The operator's manifest: one order per device of this seed. */
    for (unsigned i = 0; i < N_DEVICES; i++) {
        char udid[65], eid[33], iccid[21];
        sim_devsim_identity(SEED, i, udid, eid);
        st_iccid(9000 + i, iccid);
        assert_int_equal(sim_smdp_add_order(w.smdp, eid, iccid, NULL, true, &err), ESIM_OK);
    }

    /* A fifth of the phones are locked at first (NotNow), a tenth offline. */
    sim_devsim_config dc = {.server_url = server,
                            .apns_url = apns,
                            .pki_dir = pki,
                            .data_dir = data,
                            .devices = N_DEVICES,
                            .supervised_share = 1.0,
                            .notnow_share = 0.2,
                            .offline_share = 0.1,
                            .seed = SEED,
                            .notnow_ms = 1500,
                            .offline_ms = 1500,
                            .channel = "e2e",
                            .status_listen = "127.0.0.1:0"};
    assert_int_equal(sim_devsim_new(w.base, &dc, &w.ds, &err), ESIM_OK);
    for (int i = 0; i < 300 && !all_enrolled(&w); i++)
        run_ms(&w, 100);
    assert_true(all_enrolled(&w));

    char *c1 = enqueue(&w, json_pack("{s:s, s:s, s:{s:s, s:s}}", "request_type", "InstallProfile",
                                     "identifier", "com.example.esim-policy", "restrictions",
                                     "esim_modification", "deny", "preserve_esim_on_erase", "on"));
    char esim_url[128];
    snprintf(esim_url, sizeof esim_url, "%s", sim_smdp_url(w.smdp));
    char *c2 = enqueue(&w, json_pack("{s:s, s:s}", "request_type", "RefreshCellularPlans",
                                     "esim_server_url", esim_url));
    char *c3 = enqueue(&w, json_pack("{s:s, s:[s]}", "request_type", "DeviceInformation", "queries",
                                     "ServiceSubscriptions"));
    assert_int_equal(wait_final(&w, c1), N_DEVICES);
    assert_int_equal(wait_final(&w, c2), N_DEVICES);
    assert_int_equal(wait_final(&w, c3), N_DEVICES);

    sim_devsim_stats stats = sim_devsim_get_stats(w.ds);
    assert_true(stats.not_now > 0); /* the locked phones really said NotNow */
    /* Every answer counted once by its Status, each command acknowledged
     * by every phone in the end. */
    assert_int_equal(stats.acknowledged + stats.not_now + stats.errors, stats.commands);
    assert_true(stats.acknowledged >= 3 * N_DEVICES);
    for (unsigned i = 0; i < N_DEVICES; i++) {
        sim_device *d = sim_devsim_device_at(w.ds, i);
        const sim_euicc *e = sim_device_euicc_const(d);
        char iccid[21];
        st_iccid(9000 + i, iccid);
        const sim_profile *en = sim_euicc_enabled(e);
        assert_non_null(en);
        assert_string_equal(en->iccid, iccid);
        assert_int_equal(sim_euicc_profile_count(e), 1);
        assert_int_equal(sim_euicc_notification_count(e), 0); /* all confirmed */
        esim_policy eff = sim_device_restrictions(d);
        assert_int_equal(eff.allow_esim_modification, ESIM_TRI_FALSE);
        const sim_order *o = sim_smdp_find_order(w.smdp, iccid);
        assert_int_equal(o->state, SIM_ORDER_INSTALLED);
        assert_int_equal(o->downloads, 1);
        assert_int_equal(o->installs, 1);
        assert_string_equal(o->eid, sim_euicc_eid(e));
        /* The service learnt the EID from ServiceSubscriptions. */
        char path[128];
        snprintf(path, sizeof path, "/v1/devices/%s", sim_device_udid(d));
        long st;
        json_t *r = api(&w, "GET", path, NULL, &st);
        assert_int_equal(st, 200);
        json_t *dev = json_object_get(r, "device") ? json_object_get(r, "device") : r;
        assert_non_null(sim_json_str(dev, "eid"));
        assert_string_equal(sim_json_str(dev, "eid"), sim_euicc_eid(e));
        json_decref(r);
    }

    /* The person on the phone: deleting the eSIM is refused by the policy. */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/devices/%s/actions/delete-esim",
             sim_devsim_status_port(w.ds), sim_device_udid(sim_devsim_device_at(w.ds, 0)));
    long st;
    json_t *r = st_request(w.base, w.http, "POST", url, NULL, NULL, NULL, 0, &st);
    assert_int_equal(st, 200);
    assert_false(json_is_true(json_object_get(r, "allowed")));
    json_decref(r);
    assert_non_null(sim_euicc_enabled(sim_device_euicc_const(sim_devsim_device_at(w.ds, 0))));

    /* The SM-DP+ admin view agrees: every order Installed exactly once. */
    snprintf(url, sizeof url, "%s/admin/orders", sim_smdp_url(w.smdp));
    static const char *const auth[] = {"Authorization: Bearer e2e-token"};
    r = st_request(w.base, w.http, "GET", url, sim_pki_ca_file(p), NULL, auth, 1, &st);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(r, "counts"), "Installed")),
                     N_DEVICES);
    json_decref(r);

    /* Restart the simulator on the same data directory: the phones keep
     * their eSIMs, restrictions, enrolment and identity, register their
     * tokens again and still answer the service. */
    sim_devsim_free(w.ds);
    w.ds = NULL;
    assert_int_equal(sim_devsim_new(w.base, &dc, &w.ds, &err), ESIM_OK);
    for (unsigned i = 0; i < N_DEVICES; i++) {
        sim_device *d = sim_devsim_device_at(w.ds, i);
        char iccid[21];
        st_iccid(9000 + i, iccid);
        assert_true(sim_device_enrolled(d));
        assert_non_null(sim_euicc_enabled(sim_device_euicc_const(d)));
        assert_string_equal(sim_euicc_enabled(sim_device_euicc_const(d))->iccid, iccid);
        assert_int_equal(sim_device_restrictions(d).allow_esim_modification, ESIM_TRI_FALSE);
    }
    char *c4 = enqueue(&w, json_pack("{s:s, s:[s]}", "request_type", "DeviceInformation", "queries",
                                     "ServiceSubscriptions"));
    assert_int_equal(wait_final(&w, c4), N_DEVICES);
    free(c4);

    /* EraseDevice: acknowledged, then the phone wipes; with PreserveDataPlan
     * the eSIM survives, without it the eUICC is reset. (Whether the service
     * lets the wiped phone re-enrol with its new identity is the service's
     * rule; it is not asserted here.) */
    char *c5 = enqueue_some(
        &w, json_pack("{s:s, s:b}", "request_type", "EraseDevice", "preserve_data_plan", 1), 0, 1);
    char *c6 = enqueue_some(&w, json_pack("{s:s}", "request_type", "EraseDevice"), 1, 1);
    assert_int_equal(wait_final_n(&w, c5, 1), 1);
    assert_int_equal(wait_final_n(&w, c6, 1), 1);
    for (int i = 0;
         i < 50 && (sim_device_profile_count(sim_devsim_device_at(w.ds, 0)) ||
                    sim_euicc_profile_count(sim_device_euicc_const(sim_devsim_device_at(w.ds, 1))));
         i++)
        run_ms(&w, 100);
    sim_device *kept = sim_devsim_device_at(w.ds, 0), *wiped = sim_devsim_device_at(w.ds, 1);
    assert_int_equal(sim_device_profile_count(kept), 0);
    assert_int_equal(sim_device_profile_count(wiped), 0);
    assert_non_null(sim_euicc_enabled(sim_device_euicc_const(kept)));
    assert_int_equal(sim_euicc_profile_count(sim_device_euicc_const(wiped)), 0);
    free(c5);
    free(c6);

    free(c1);
    free(c2);
    free(c3);
    sim_devsim_free(w.ds);
    sim_smdp_free(w.smdp);
    sim_http_free(w.http);
    sim_pki_free(p);
    event_base_free(w.base);
}

/* Identity by TLS client certificate: the service on HTTPS asks each phone
 * for its identity certificate on its own connection. Each phone's
 * certificate has its own key, and a restarted simulator keeps each key
 * with its certificate. */
static void test_mtls(void **state)
{
    (void)state;
    world w = {0};
    w.base = event_base_new();
    assert_int_equal(sim_http_new(w.base, &w.http, NULL), ESIM_OK);
    char pki[600], data[600], apns[64], server[64];
    snprintf(pki, sizeof pki, "%s/pki", fx.dir);
    snprintf(data, sizeof data, "%s/devsim-mtls", fx.dir);
    snprintf(apns, sizeof apns, "http://127.0.0.1:%d", fx.mock_delivery);
    snprintf(server, sizeof server, "https://127.0.0.1:%d", fx.svc_port);
    sim_pki *p = NULL;
    assert_int_equal(sim_pki_open(pki, &p, NULL), ESIM_OK);
    esim_error err;
    sim_smdp_config sc = {.pki = p};
    assert_int_equal(sim_smdp_new(w.base, &sc, &w.smdp, &err), ESIM_OK);
    enum { N = 5, MSEED = 777 };
    for (unsigned i = 0; i < N; i++) {
        char udid[65], eid[33], iccid[21];
        sim_devsim_identity(MSEED, i, udid, eid);
        st_iccid(7000 + i, iccid);
        assert_int_equal(sim_smdp_add_order(w.smdp, eid, iccid, NULL, true, &err), ESIM_OK);
    }
    sim_devsim_config dc = {.server_url = server,
                            .apns_url = apns,
                            .pki_dir = pki,
                            .data_dir = data,
                            .devices = N,
                            .supervised_share = 1.0,
                            .seed = MSEED,
                            .channel = "mtls",
                            .tls_client_auth = true};
    assert_int_equal(sim_devsim_new(w.base, &dc, &w.ds, &err), ESIM_OK);
    for (int i = 0; i < 300 && !all_enrolled(&w); i++)
        run_ms(&w, 100);
    assert_true(all_enrolled(&w));
    /* The service bound each phone to its own certificate, and no two of
     * those certificates carry the same key. */
    esim_buf certs[N] = {{0}};
    for (unsigned i = 0; i < N; i++) {
        sim_device *d = sim_devsim_device_at(w.ds, i);
        const esim_buf *id = NULL;
        assert_int_equal(sim_device_identity(d, &id, NULL), ESIM_OK);
        assert_int_equal(esim_buf_append(&certs[i], id->data, id->len), ESIM_OK);
        char path[128], hex[65];
        snprintf(path, sizeof path, "/v1/devices/%s", sim_device_udid(d));
        long st;
        json_t *r = api(&w, "GET", path, NULL, &st);
        assert_int_equal(st, 200);
        unsigned char sha[32];
        SHA256(id->data, id->len, sha);
        for (int k = 0; k < 32; k++)
            snprintf(hex + 2 * k, 3, "%02x", sha[k]);
        assert_string_equal(sim_json_str(r, "identity_sha256"), hex);
        json_decref(r);
        sim_cert_view vi, vk;
        assert_true(sim_cert_view_parse(id->data, id->len, &vi));
        for (unsigned k = 0; k < i; k++) {
            assert_true(sim_cert_view_parse(certs[k].data, certs[k].len, &vk));
            assert_memory_not_equal(vi.point, vk.point, 65);
        }
    }
    /* A restarted simulator keeps each phone's key with its certificate:
     * the same identities, and their first connections (full handshakes,
     * the client certificate signed for) are accepted. */
    sim_devsim_free(w.ds);
    w.ds = NULL;
    assert_int_equal(sim_devsim_new(w.base, &dc, &w.ds, &err), ESIM_OK);
    for (unsigned i = 0; i < N; i++) {
        const esim_buf *id = NULL;
        assert_int_equal(sim_device_identity(sim_devsim_device_at(w.ds, i), &id, NULL), ESIM_OK);
        assert_int_equal(id->len, certs[i].len);
        assert_memory_equal(id->data, certs[i].data, certs[i].len);
        esim_buf_free(&certs[i]);
    }
    char esim_url[128];
    snprintf(esim_url, sizeof esim_url, "%s", sim_smdp_url(w.smdp));
    char *c1 = enqueue(&w, json_pack("{s:s, s:s}", "request_type", "RefreshCellularPlans",
                                     "esim_server_url", esim_url));
    assert_int_equal(wait_final(&w, c1), N);
    for (unsigned i = 0; i < N; i++) {
        char iccid[21];
        st_iccid(7000 + i, iccid);
        const sim_profile *en =
            sim_euicc_enabled(sim_device_euicc_const(sim_devsim_device_at(w.ds, i)));
        assert_non_null(en);
        assert_string_equal(en->iccid, iccid);
        assert_int_equal(sim_smdp_find_order(w.smdp, iccid)->state, SIM_ORDER_INSTALLED);
    }
    assert_true(sim_devsim_get_stats(w.ds).tls_client_certs >= N);
    free(c1);
    sim_devsim_free(w.ds);
    sim_smdp_free(w.smdp);
    sim_http_free(w.http);
    sim_pki_free(p);
    event_base_free(w.base);
}

/* After EraseDevice with PreserveDataPlan the phone sets up again: it
 * re-enrols (new push token; here the identity is kept, see
 * --reuse-identity-after-erase), registers its new token, and answers the
 * service again with its eSIM still there. */
static void test_erase_reenrol(void **state)
{
    (void)state;
    world w = {0};
    w.base = event_base_new();
    assert_int_equal(sim_http_new(w.base, &w.http, NULL), ESIM_OK);
    char pki[600], apns[64], server[64];
    snprintf(pki, sizeof pki, "%s/pki", fx.dir);
    snprintf(apns, sizeof apns, "http://127.0.0.1:%d", fx.mock_delivery);
    snprintf(server, sizeof server, "http://127.0.0.1:%d", fx.svc_port);
    esim_error err;
    sim_devsim_config dc = {.server_url = server,
                            .apns_url = apns,
                            .pki_dir = pki,
                            .devices = 2,
                            .supervised_share = 1.0,
                            .seed = 555,
                            .channel = "erase",
                            .reuse_identity_on_erase = true};
    assert_int_equal(sim_devsim_new(w.base, &dc, &w.ds, &err), ESIM_OK);
    for (int i = 0; i < 300 && !all_enrolled(&w); i++)
        run_ms(&w, 100);
    assert_true(all_enrolled(&w));
    /* Both phones already carry an eSIM (as after a campaign). */
    for (unsigned i = 0; i < 2; i++) {
        sim_profile p = {0};
        st_iccid(5550 + i, p.iccid);
        p.profile_class = SIM_CLASS_OPERATIONAL;
        sim_result r;
        sim_euicc *e = sim_device_euicc(sim_devsim_device_at(w.ds, i));
        assert_int_equal(sim_euicc_install(e, &p, &r, NULL), ESIM_OK);
        assert_int_equal(sim_euicc_enable(e, p.iccid), SIM_RES_OK);
    }
    size_t tl;
    unsigned char old_token[32];
    memcpy(old_token, sim_device_push_token(sim_devsim_device_at(w.ds, 0), &tl), 32);
    char *c1 = enqueue(
        &w, json_pack("{s:s, s:b}", "request_type", "EraseDevice", "preserve_data_plan", 1));
    assert_int_equal(wait_final(&w, c1), 2);
    /* Wiped, then enrolled again as after setup. */
    for (int i = 0; i < 100; i++) {
        run_ms(&w, 100);
        if (all_enrolled(&w) &&
            memcmp(old_token, sim_device_push_token(sim_devsim_device_at(w.ds, 0), &tl), 32) != 0)
            break;
    }
    if (!all_enrolled(&w)) {
        sim_devsim_stats t = sim_devsim_get_stats(w.ds);
        fprintf(stderr, "re-enrolment: %zu enrolments, %zu http errors, enrolled %d %d\n",
                t.enrolled, t.http_errors, sim_device_enrolled(sim_devsim_device_at(w.ds, 0)),
                sim_device_enrolled(sim_devsim_device_at(w.ds, 1)));
    }
    assert_true(all_enrolled(&w));
    assert_memory_not_equal(old_token, sim_device_push_token(sim_devsim_device_at(w.ds, 0), &tl),
                            32);
    /* The new token reaches the mock, the service pushes to it, the phone answers. */
    char *c2 = enqueue(&w, json_pack("{s:s, s:[s]}", "request_type", "DeviceInformation", "queries",
                                     "ServiceSubscriptions"));
    assert_int_equal(wait_final(&w, c2), 2);
    for (unsigned i = 0; i < 2; i++) {
        sim_device *d = sim_devsim_device_at(w.ds, i);
        assert_int_equal(sim_device_profile_count(d), 0);
        assert_non_null(sim_euicc_enabled(sim_device_euicc_const(d))); /* PreserveDataPlan */
    }
    free(c1);
    free(c2);
    sim_devsim_free(w.ds);
    sim_http_free(w.http);
    event_base_free(w.base);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_end_to_end, start_signature, stop_service),
        cmocka_unit_test_setup_teardown(test_mtls, start_mtls, stop_service),
        cmocka_unit_test_setup_teardown(test_erase_reenrol, start_signature, stop_service),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
