/*
 * test_sim_windows_service.c — simulated Windows PCs against the real
 * `esim-mdm serve` (a subprocess: its OMA-DM endpoint with client
 * certificates, its WNS client) with the WNS mock, the SM-DP+ and the PCs in
 * this process. Every eUICCs CSP operation of the admin API, each verified
 * by the service in the PCs' later sessions: a profile by activation code,
 * three realistic failures (ErrorDetail 12, 6, 14), discovery with
 * AutoEnable, the local-UI policy against a user's deletion, reset to
 * factory state, deleting a profile; then a WNS channel that expires (410
 * to the service) and is registered again.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "tests/sim/sim_test.h"
#include "wns/wns_mock.h"

#pragma GCC diagnostic ignored "-Wformat-truncation"

#define NPC 3
#define SEED 5151

static struct {
    char *dir;
    const char *bin;
    char pki[600];
    sim_pki *p;
    struct event_base *base;
    sim_http *http;
    wns_mock *wns;
    sim_smdp *smdp;
    sim_devsim *ds;
    pid_t svc;
    int svc_port;
    char token[128];
    char eid[NPC][ESIM_EID_LEN + 1];
    char id[NPC][65];
} fx;

static pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int lf = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (lf >= 0) {
            dup2(lf, 1);
            dup2(lf, 2);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Runs the loop (the mock, the SM-DP+ and the PCs) until |path| has a line. */
static bool wait_file(const char *path, esim_buf *out)
{
    int64_t start = esim_mono_ms();
    while (esim_mono_ms() - start < 30000) {
        esim_buf_reset(out);
        if (esim_read_file(path, 4096, out, NULL) == ESIM_OK && out->len > 0 &&
            out->data[out->len - 1] == '\n')
            return true;
        struct timeval tv = {0, 50000};
        event_base_loopexit(fx.base, &tv);
        event_base_dispatch(fx.base);
    }
    return false;
}

static void run_ms(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(fx.base, &tv);
    event_base_dispatch(fx.base);
}

static json_t *api(const char *method, const char *path, json_t *body, long *status)
{
    char url[512], auth[200], ca[700];
    snprintf(url, sizeof url, "https://127.0.0.1:%d%s", fx.svc_port, path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", fx.token);
    snprintf(ca, sizeof ca, "%s/ca.pem", fx.pki);
    const char *h[] = {auth, "Content-Type: application/json"};
    json_t *r = st_request(fx.base, fx.http, method, url, ca, body, h, 2, status);
    json_decref(body);
    return r;
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    fx.bin = getenv("ESIM_MDM_BIN");
    if (!fx.bin || access(fx.bin, X_OK) != 0)
        return -1;
    fx.dir = st_tempdir();
    snprintf(fx.pki, sizeof fx.pki, "%s/pki", fx.dir);
    if (sim_pki_open(fx.pki, &fx.p, NULL) != ESIM_OK)
        return -1;
    fx.base = event_base_new();
    if (sim_http_new(fx.base, &fx.http, NULL) != ESIM_OK)
        return -1;
    char cert[700], key[700], ca[700], dca[700];
    snprintf(cert, sizeof cert, "%s/server.pem", fx.pki);
    snprintf(key, sizeof key, "%s/server.key", fx.pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", fx.pki);
    snprintf(dca, sizeof dca, "%s/device-ca.pem", fx.pki);

    /* The WNS mock, with the service's credentials. */
    wns_mock_config wc;
    wns_mock_config_init(&wc);
    wc.listen = "127.0.0.1:0";
    wc.delivery_listen = "127.0.0.1:0";
    wc.tls_cert = cert;
    wc.tls_key = key;
    wc.client_id = "ms-app://S-1-15-2-5151";
    wc.client_secret = "wns-secret-5151";
    if (wns_mock_new(fx.base, &wc, &fx.wns, NULL) != ESIM_OK)
        return -1;

    /* The SM-DP+: PC0's order by matching ID, PC1's not released, PC2's by EID. */
    sim_smdp_config sc = {.pki = fx.p};
    if (sim_smdp_new(fx.base, &sc, &fx.smdp, NULL) != ESIM_OK)
        return -1;
    char udid[65], iccid[SIM_ICCID_MAX + 1];
    for (int i = 0; i < NPC; i++) {
        sim_devsim_identity(SEED, (unsigned)i, udid, fx.eid[i]);
        sim_devsim_windows_id(SEED, (unsigned)i, fx.id[i]);
    }
    st_iccid(700, iccid);
    sim_smdp_add_order(fx.smdp, fx.eid[0], iccid, "0A1B2-C3D4E-5F6A7-B8C9D", true, NULL);
    st_iccid(701, iccid);
    sim_smdp_add_order(fx.smdp, fx.eid[1], iccid, "11111-22222-33333-44444", false, NULL);
    st_iccid(702, iccid);
    sim_smdp_add_order(fx.smdp, fx.eid[2], iccid, NULL, true, NULL);

    /* The service, with its WNS client pointed at the mock. */
    char portfile[700], data[700], log[700], secret[700], token_url[128];
    snprintf(portfile, sizeof portfile, "%s/svc.port", fx.dir);
    snprintf(data, sizeof data, "%s/svc", fx.dir);
    snprintf(log, sizeof log, "%s/serve.log", fx.dir);
    snprintf(secret, sizeof secret, "%s/wns-secret", fx.dir);
    if (esim_write_file_atomic(secret, "wns-secret-5151\n", 16, 0600, NULL) != ESIM_OK)
        return -1;
    snprintf(token_url, sizeof token_url, "https://127.0.0.1:%d/accesstoken.srf",
             wns_mock_port(fx.wns, WNS_MOCK_PORT_HTTPS));
    char *argv[] = {(char *)fx.bin,
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--port-file",
                    portfile,
                    "--data-dir",
                    data,
                    "--device-ca",
                    dca,
                    "--tls-cert",
                    cert,
                    "--tls-key",
                    key,
                    "--wns-token-url",
                    token_url,
                    "--wns-client-id",
                    "ms-app://S-1-15-2-5151",
                    "--wns-secret-file",
                    secret,
                    "--wns-ca",
                    ca,
                    NULL};
    fx.svc = spawn(argv, log);
    esim_buf b = {0};
    if (fx.svc <= 0 || !wait_file(portfile, &b)) {
        fprintf(stderr, "esim-mdm serve did not start (see %s)\n", log);
        esim_buf_free(&b);
        return -1;
    }
    fx.svc_port = atoi((const char *)b.data);
    char tokfile[760];
    snprintf(tokfile, sizeof tokfile, "%s/api-token", data);
    if (!wait_file(tokfile, &b))
        return -1;
    size_t len = b.len;
    while (len > 0 && (b.data[len - 1] == '\n' || b.data[len - 1] == '\r'))
        len--;
    snprintf(fx.token, sizeof fx.token, "%.*s", (int)len, (const char *)b.data);
    esim_buf_free(&b);

    /* Three PCs polling every second, woken through the mock. */
    char svc_url[64], wns_deliv[64], resolve[2][128];
    snprintf(svc_url, sizeof svc_url, "https://127.0.0.1:%d", fx.svc_port);
    snprintf(wns_deliv, sizeof wns_deliv, "http://127.0.0.1:%d",
             wns_mock_port(fx.wns, WNS_MOCK_PORT_DELIVERY));
    snprintf(resolve[0], sizeof resolve[0], "smdp.example.com=127.0.0.1:%u",
             sim_smdp_port(fx.smdp));
    snprintf(resolve[1], sizeof resolve[1], "dead.example.com=127.0.0.1:1");
    const char *res[] = {resolve[0], resolve[1]};
    sim_devsim_config dc = {.server_url = svc_url,
                            .pki_dir = fx.pki,
                            .devices = NPC,
                            .windows_pcs = NPC,
                            .wns_url = wns_deliv,
                            .windows_poll_ms = 1000,
                            .seed = SEED,
                            .smdp_resolve = res,
                            .n_smdp_resolve = 2};
    if (sim_devsim_new(fx.base, &dc, &fx.ds, NULL) != ESIM_OK)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (fx.svc > 0) {
        kill(fx.svc, SIGTERM);
        waitpid(fx.svc, NULL, 0);
    }
    sim_devsim_free(fx.ds);
    sim_http_free(fx.http);
    wns_mock_free(fx.wns);
    sim_smdp_free(fx.smdp);
    event_base_free(fx.base);
    sim_pki_free(fx.p);
    if (!getenv("ESIM_KEEP_TEST_DIR"))
        st_rmrf(fx.dir);
    else
        fprintf(stderr, "kept %s\n", fx.dir);
    free(fx.dir);
    return 0;
}

/* The service's record of PC |i| (NULL until it had a session). */
static json_t *device(int i)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/devices/%s", fx.id[i]);
    long st;
    json_t *d = api("GET", path, NULL, &st);
    if (st != 200) {
        json_decref(d);
        return NULL;
    }
    json_t *inner = json_object_get(d, "device");
    if (inner) {
        json_incref(inner);
        json_decref(d);
        return inner;
    }
    return d;
}

/* Runs an eSIM operation for PC |i| and waits for its verification; returns
 * the device's entry of GET /v1/windows/esim/{uuid} (the caller frees). */
static json_t *operate(int i, json_t *op)
{
    json_object_set_new(op, "udids", json_pack("[s]", fx.id[i]));
    json_t *op_copy = json_copy(op);
    long st;
    json_t *r = api("POST", "/v1/windows/esim", op, &st);
    if (st != 200 && st != 201) {
        char *t = r ? json_dumps(r, 0) : NULL;
        fprintf(stderr, "POST /v1/windows/esim answered %ld: %s\n", st, t ? t : "");
        free(t);
    }
    assert_true(st == 200 || st == 201);
    const char *uuid =
        sim_json_str(json_array_get(json_object_get(r, "commands"), 0), "command_uuid");
    assert_non_null(uuid);
    char path[200];
    snprintf(path, sizeof path, "/v1/windows/esim/%s", uuid);
    json_decref(r);
    for (int k = 0; k < 300; k++) {
        json_t *g = api("GET", path, NULL, &st);
        json_t *d = json_array_get(json_object_get(g, "devices"), 0);
        const char *v = sim_json_str(d, "verification"), *state_ = sim_json_str(d, "state");
        /* Operations the service does not verify (local_ui) end with their answer. */
        bool unverified = strcmp(sim_json_str(op_copy, "operation"), "local_ui") == 0;
        if ((v && strcmp(v, "pending") != 0) ||
            (unverified && state_ &&
             (strcmp(state_, "acknowledged") == 0 || strcmp(state_, "error") == 0))) {
            json_decref(op_copy);
            json_incref(d);
            json_decref(g);
            return d;
        }
        if (k == 299) {
            char *t = json_dumps(g, 0);
            fprintf(stderr, "last answer: %s\n", t ? t : "");
            free(t);
        }
        json_decref(g);
        run_ms(200);
    }
    json_decref(op_copy);
    fail_msg("operation %s never left pending", path);
    return NULL;
}

static void expect(json_t *d, const char *verification, const char *in_detail)
{
    const char *v = sim_json_str(d, "verification"), *det = sim_json_str(d, "detail");
    if (!v || strcmp(v, verification) != 0 || (in_detail && (!det || !strstr(det, in_detail)))) {
        char *t = json_dumps(d, 0);
        fail_msg("want %s (%s), got %s", verification, in_detail ? in_detail : "", t);
    }
    json_decref(d);
}

static void test_every_operation(void **state)
{
    (void)state;
    /* Each PC becomes known at its first session, with its EID. */
    for (int i = 0; i < NPC; i++) {
        json_t *d = NULL;
        for (int k = 0; k < 150; k++) {
            d = device(i);
            if (d && sim_json_str(d, "eid") && strcmp(sim_json_str(d, "eid"), fx.eid[i]) == 0)
                break;
            json_decref(d);
            d = NULL;
            run_ms(200);
        }
        assert_non_null(d);
        assert_string_equal(sim_json_str(d, "platform"), "windows");
        json_decref(d);
    }
    sim_winpc *pc[NPC];
    for (int i = 0; i < NPC; i++)
        assert_non_null(pc[i] = sim_devsim_find_windows(fx.ds, fx.id[i]));
    char iccid[4][SIM_ICCID_MAX + 1];
    for (int k = 0; k < 4; k++)
        st_iccid(700 + (unsigned)k, iccid[k]);

    /* PC0: a profile by server and matching ID, enabled: done, installed. */
    expect(operate(0, json_pack("{s:s, s:s, s:s, s:s, s:b}", "operation", "add_profile", "iccid",
                                iccid[0], "server", "smdp.example.com", "matching_id",
                                "0A1B2-C3D4E-5F6A7-B8C9D", "enabled", 1)),
           "done", NULL);
    const sim_profile *en = sim_euicc_enabled(sim_winpc_euicc_const(pc[0]));
    assert_non_null(en);
    assert_string_equal(en->iccid, iccid[0]);
    assert_int_equal(sim_smdp_find_order(fx.smdp, iccid[0])->state, SIM_ORDER_INSTALLED);

    /* PC1: realistic failures, each with its ErrorDetail. */
    expect(operate(1, json_pack("{s:s, s:s, s:s, s:s}", "operation", "add_profile", "iccid",
                                iccid[1], "server", "smdp.example.com", "matching_id",
                                "11111-22222-33333-44444")),
           "failed", "12");
    expect(operate(1, json_pack("{s:s, s:s, s:s, s:s}", "operation", "add_profile", "iccid",
                                iccid[3], "server", "smdp.example.com", "matching_id",
                                "FFFFF-FFFFF-FFFFF-FFFFF")),
           "failed", "6");
    expect(operate(1, json_pack("{s:s, s:s, s:s, s:s}", "operation", "add_profile", "iccid",
                                iccid[2], "server", "dead.example.com", "matching_id",
                                "AAAAA-BBBBB-CCCCC-DDDDD")),
           "failed", "14");
    assert_null(sim_euicc_enabled(sim_winpc_euicc_const(pc[1])));

    /* PC2: discovery with AutoEnable, the local-UI policy, a refused user
     * deletion, then reset to factory state. */
    expect(operate(2, json_pack("{s:s, s:s, s:b}", "operation", "add_server", "server",
                                "smdp.example.com", "auto_enable", 1)),
           "done", NULL);
    en = sim_euicc_enabled(sim_winpc_euicc_const(pc[2]));
    assert_non_null(en);
    assert_string_equal(en->iccid, iccid[2]);
    json_t *d = operate(2, json_pack("{s:s, s:b}", "operation", "local_ui", "local_ui_enabled", 0));
    assert_string_equal(sim_json_str(d, "state"), "acknowledged");
    json_decref(d);
    esim_buf v = {0};
    char uri[200];
    snprintf(uri, sizeof uri, "./Device/Vendor/MSFT/eUICCs/%s/Policies/LocalUIEnabled", fx.eid[2]);
    assert_int_equal(sim_winpc_get(pc[2], uri, &v), ESIM_OK);
    assert_string_equal((const char *)v.data, "false");
    esim_buf_free(&v);
    sim_action_outcome o;
    assert_int_equal(sim_devsim_user_action(fx.ds, fx.id[2], SIM_ACTION_DELETE_ESIM, &o, NULL),
                     ESIM_OK);
    assert_false(o.allowed);
    expect(operate(2, json_pack("{s:s}", "operation", "reset")), "done", NULL);
    assert_int_equal(sim_euicc_profile_count(sim_winpc_euicc_const(pc[2])), 0);

    /* PC0: deleting its profile. */
    expect(operate(0, json_pack("{s:s, s:s}", "operation", "delete_profile", "iccid", iccid[0])),
           "done", NULL);
    assert_null(sim_euicc_find(sim_winpc_euicc_const(pc[0]), iccid[0]));

    sim_devsim_stats st = sim_devsim_get_stats(fx.ds);
    assert_int_equal(st.win_session_errors, 0);
    assert_true(st.wns_pushes > 0); /* the service woke them through the mock */
}

/* A raw Get of |uri| for PC |id| through POST /v1/windows/commands. */
static void raw_get(const char *id, const char *uri)
{
    char uuid[ESIM_UUID_LEN + 1], syncml[400];
    esim_uuid_new(uuid);
    snprintf(syncml, sizeof syncml,
             "<Get><CmdID>%s</CmdID><Item><Target><LocURI>%s</LocURI></Target></Item></Get>", uuid,
             uri);
    long st;
    json_t *r = api("POST", "/v1/windows/commands",
                    json_pack("{s:[s], s:s, s:s, s:s}", "udids", id, "uuid", uuid, "request_type",
                              "Get", "syncml", syncml),
                    &st);
    if (st != 200 && st != 201) {
        char *t = r ? json_dumps(r, 0) : NULL;
        fprintf(stderr, "POST /v1/windows/commands answered %ld: %s\n", st, t ? t : "");
        free(t);
    }
    assert_true(st == 200 || st == 201);
    json_decref(r);
}

static void test_wns_expiry(void **state)
{
    (void)state;
    sim_winpc *pc0 = sim_devsim_find_windows(fx.ds, fx.id[0]);
    assert_non_null(sim_winpc_channel_uri(pc0));
    wns_mock_stats before, after;
    wns_mock_stats_get(fx.wns, &before);
    /* The channel expires; the service's next push to it gets 410. */
    bool saw_410 = false;
    for (int attempt = 0; attempt < 3 && !saw_410; attempt++) {
        char old[600];
        snprintf(old, sizeof old, "%s", sim_winpc_channel_uri(pc0));
        assert_int_equal(wns_mock_expire_channel(fx.wns, old, NULL), ESIM_OK);
        raw_get(fx.id[0], "./DevInfo/Man");
        run_ms(500);
        wns_mock_stats_get(fx.wns, &after);
        saw_410 = after.gone > before.gone;
        /* The PC gets a new channel and reports it at its next session. */
        for (int k = 0; k < 100 && strcmp(sim_winpc_channel_uri(pc0), old) == 0; k++)
            run_ms(50);
        assert_string_not_equal(sim_winpc_channel_uri(pc0), old);
    }
    assert_true(saw_410);
    /* Within a few polls the service knows the new channel, and a push to it
     * wakes the PC (Alert 1200). */
    json_t *d = NULL;
    for (int k = 0; k < 100; k++) {
        d = device(0);
        const char *ps = sim_json_str(json_object_get(d, "push"), "state");
        if (ps && strcmp(ps, "valid") == 0)
            break;
        json_decref(d);
        d = NULL;
        run_ms(200);
    }
    assert_non_null(d);
    json_decref(d);
    sim_devsim_stats s0 = sim_devsim_get_stats(fx.ds);
    wns_mock_stats_get(fx.wns, &before);
    raw_get(fx.id[0], "./DevInfo/Mod");
    for (int k = 0; k < 100 && sim_devsim_get_stats(fx.ds).wns_pushes == s0.wns_pushes; k++)
        run_ms(50);
    wns_mock_stats_get(fx.wns, &after);
    assert_true(after.accepted > before.accepted);
    assert_true(sim_devsim_get_stats(fx.ds).wns_pushes > s0.wns_pushes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_operation),
        cmocka_unit_test(test_wns_expiry),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
