/*
 * test_windows_e2e.c — Windows PCs end to end against the real service:
 * the service (TLS, client certificates, WNS client) on its own thread;
 * the simulated Windows 11 PCs of the device simulator, the WNS mock and
 * the SM-DP+ simulator on this thread's loop. Every eSIM operation of the
 * API against the simulator (a released profile installed and verified, a
 * profile the operator did not release failed with its ErrorDetail in
 * words, discovery with AutoEnable, LocalUIEnabled, reset), the Windows
 * diagnosis, WNS channel expiry (410) and re-registration, a campaign
 * whose PCs get their eSIM through the Windows adapter, the diagnosis of a
 * campaign's PC whose discovery failed (no order), `esim-mdm windows`
 * (the CLI of these routes), and a restart of the service in the middle of
 * a verification.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "service/svc_harness.h"
#include "tests/sim/sim_test.h"
#include "wns/wns_mock.h"

#define NPC 6
#define SEED 777

static struct {
    harness_env env;
    char *dir;
    char pki_dir[600];
    sim_pki *pki;
    struct event_base *base; /* the simulators' loop (this thread) */
    sim_smdp *smdp;
    wns_mock *wns;
    sim_devsim *ds;
    test_service ts;
    esim_service_config cfg; /* kept for restarts */
    char data[320];
    char token_file[600];
    char id[NPC][65];
    char eid[NPC][ESIM_EID_LEN + 1];
    char smdp_name[64];
    char ca[700];
} fx;

/* Runs the simulators' loop for |ms|. */
static void pump(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(fx.base, &tv);
    event_base_dispatch(fx.base);
}

static json_t *get_json(const char *path)
{
    json_t *j = NULL;
    long code = api_call(fx.ts.url, TEST_TOKEN, "GET", path, NULL, NULL, &j);
    if (code != 200) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static json_t *post_json(const char *path, const char *body, long want)
{
    json_t *j = NULL;
    long code = api_call(fx.ts.url, TEST_TOKEN, "POST", path, body, "application/json", &j);
    if (code != want)
        fail_msg("POST %s: %ld, wanted %ld: %s", path, code, want, body);
    return j;
}

/* Waits (pumping the simulators; |each|, may be NULL, runs with |arg| at
 * the start of every round) until the campaign at |path| (/v1/campaigns/ID)
 * is finished, 300 rounds at most; returns its JSON as last read (the
 * caller frees it). */
static json_t *wait_campaign(const char *path, void (*each)(void *arg), void *arg)
{
    json_t *s = NULL;
    for (int k = 0; k < 300; k++) {
        if (each)
            each(arg);
        json_decref(s);
        s = get_json(path);
        const char *st = json_string_value(json_object_get(s, "state"));
        if (st && strcmp(st, "finished") == 0)
            break;
        pump(100);
    }
    return s;
}

/* Waits (pumping the simulators) until the operation's verification is
 * final; returns the JSON of its device. */
static json_t *wait_verdict(const char *uuid)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/windows/esim/%s", uuid);
    for (int k = 0; k < 400; k++) {
        json_t *j = get_json(path);
        json_t *d = json_array_get(json_object_get(j, "devices"), 0);
        const char *v = json_string_value(json_object_get(d, "verification"));
        if (v && strcmp(v, "pending") != 0) {
            json_incref(d);
            json_decref(j);
            return d;
        }
        json_decref(j);
        pump(100);
    }
    fail_msg("operation %s never finished verification", uuid);
    return NULL;
}

static char *op(int i, const char *fields)
{
    char body[800];
    snprintf(body, sizeof body, "{\"udids\":[\"%s\"],%s}", fx.id[i], fields);
    json_t *j = post_json("/v1/windows/esim", body, 201);
    char *uuid = strdup(json_string_value(
        json_object_get(json_array_get(json_object_get(j, "commands"), 0), "command_uuid")));
    json_decref(j);
    return uuid;
}

static int setup(void **state)
{
    (void)state;
    harness_env_setup(&fx.env);
    fx.dir = st_tempdir();
    snprintf(fx.pki_dir, sizeof fx.pki_dir, "%s/pki", fx.dir);
    if (sim_pki_open(fx.pki_dir, &fx.pki, NULL) != ESIM_OK)
        return -1;
    fx.base = event_base_new();
    esim_error err;
    sim_smdp_config sc = {.pki = fx.pki};
    if (sim_smdp_new(fx.base, &sc, &fx.smdp, &err) != ESIM_OK)
        return -1;
    snprintf(fx.smdp_name, sizeof fx.smdp_name, "127.0.0.1:%u", sim_smdp_port(fx.smdp));
    static char cert[700], key[700], ca[700], dca[700], secret[700];
    snprintf(cert, sizeof cert, "%s/server.pem", fx.pki_dir);
    snprintf(key, sizeof key, "%s/server.key", fx.pki_dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", fx.pki_dir);
    snprintf(dca, sizeof dca, "%s/device-ca.pem", fx.pki_dir);
    wns_mock_config wc;
    wns_mock_config_init(&wc);
    wc.listen = "127.0.0.1:0";
    wc.delivery_listen = "127.0.0.1:0";
    wc.tls_cert = cert;
    wc.tls_key = key;
    wc.client_id = "ms-app://s-1-15-2-esim-mdm-test";
    wc.client_secret = "wns-secret-0123456789";
    wc.close_connections = true; /* every push a new connection (test_wns_sessions_resume) */
    if (wns_mock_new(fx.base, &wc, &fx.wns, &err) != ESIM_OK)
        return -1;
    snprintf(secret, sizeof secret, "%s/wns.secret", fx.dir);
    if (esim_write_file_atomic(secret, "wns-secret-0123456789\n", 22, 0600, NULL) != ESIM_OK)
        return -1;
    static char token_url[128];
    snprintf(token_url, sizeof token_url, "https://127.0.0.1:%d/accesstoken.srf",
             wns_mock_port(fx.wns, WNS_MOCK_PORT_HTTPS));

    /* The service: TLS with the simulators' PKI, WNS through the mock. */
    esim_service_config cfg;
    harness_config(&fx.env, "win-e2e", &cfg, fx.data);
    cfg.tls_cert_path = cert;
    cfg.tls_key_path = key;
    /* Both device CAs: the simulated PCs' and the scripted iPhone's. */
    static char bundle[700];
    snprintf(bundle, sizeof bundle, "%s/device-cas.pem", fx.dir);
    esim_buf a = {0}, b = {0};
    if (esim_read_file(dca, 1 << 20, &a, NULL) != ESIM_OK ||
        esim_read_file(fx.env.device_ca, 1 << 20, &b, NULL) != ESIM_OK ||
        esim_buf_append(&a, b.data, b.len) != ESIM_OK ||
        esim_write_file_atomic(bundle, a.data, a.len, 0600, NULL) != ESIM_OK)
        return -1;
    esim_buf_free(&a);
    esim_buf_free(&b);
    cfg.device_ca_path = bundle;
    cfg.wns_token_url = token_url;
    cfg.wns_client_id = wc.client_id;
    cfg.wns_secret_path = secret;
    cfg.wns_ca_path = ca;
    cfg.windows_verify_interval_ms = 300;
    cfg.tick_ms = 100;
    harness_start(&fx.ts, &cfg);
    harness_set_api_ca(ca);
    snprintf(fx.ca, sizeof fx.ca, "%s", ca);
    fx.cfg = cfg;
    snprintf(fx.token_file, sizeof fx.token_file, "%s/api-token-cli", fx.dir);
    if (esim_write_file_atomic(fx.token_file, TEST_TOKEN "\n", strlen(TEST_TOKEN) + 1, 0600,
                               NULL) != ESIM_OK)
        return -1;

    char url[160], deliv[64];
    snprintf(url, sizeof url, "%s/ManagementServer/MDM.svc", fx.ts.url);
    snprintf(deliv, sizeof deliv, "http://127.0.0.1:%d",
             wns_mock_port(fx.wns, WNS_MOCK_PORT_DELIVERY));
    for (unsigned i = 0; i < NPC; i++) {
        char udid[65];
        sim_devsim_identity(SEED, i, udid, fx.eid[i]);
        sim_devsim_windows_id(SEED, i, fx.id[i]);
    }
    sim_devsim_config dc = {.server_url = url,
                            .pki_dir = fx.pki_dir,
                            .devices = NPC,
                            .windows_pcs = NPC,
                            .wns_url = deliv,
                            .windows_poll_ms = 600000,
                            .seed = SEED};
    if (sim_devsim_new(fx.base, &dc, &fx.ds, &err) != ESIM_OK) {
        fprintf(stderr, "devsim: %s\n", err.msg);
        return -1;
    }
    /* Every PC known, with its EID and a live WNS channel (a channel can
     * come after the first session: a second one reports it). */
    for (int i = 0; i < NPC; i++) {
        int k = 0;
        for (; k < 300 && !api_device_ready(fx.ts.url, fx.id[i]); k++) {
            if (k % 20 == 19)
                sim_devsim_windows_sync(fx.ds, fx.id[i], NULL);
            pump(100);
        }
        if (k == 300) {
            fprintf(stderr, "PC %s never became known with a channel\n", fx.id[i]);
            return -1;
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    harness_stop(&fx.ts);
    harness_set_api_ca(NULL);
    sim_devsim_free(fx.ds);
    wns_mock_free(fx.wns);
    sim_smdp_free(fx.smdp);
    event_base_free(fx.base);
    sim_pki_free(fx.pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    harness_env_teardown(&fx.env);
    return 0;
}

static void test_every_operation(void **state)
{
    (void)state;
    esim_error err;
    char iccid[3][SIM_ICCID_MAX + 1];
    for (int i = 0; i < 3; i++)
        st_iccid(500 + (unsigned)i, iccid[i]);
    assert_int_equal(
        sim_smdp_add_order(fx.smdp, fx.eid[0], iccid[0], "1A2B3-C4D5E-6F7A8-9B0C1", true, &err),
        ESIM_OK);
    assert_int_equal(
        sim_smdp_add_order(fx.smdp, fx.eid[1], iccid[1], "11111-22222-33333-44444", false, &err),
        ESIM_OK);
    assert_int_equal(sim_smdp_add_order(fx.smdp, fx.eid[2], iccid[2], NULL, true, &err), ESIM_OK);

    char f[600];
    /* PC0: a released profile by activation code: installed, verified. */
    snprintf(f, sizeof f,
             "\"operation\":\"add_profile\",\"iccid\":\"%s\",\"activation_code\":"
             "\"LPA:1$smdp.example.com$1A2B3-C4D5E-6F7A8-9B0C1\",\"server\":\"%s\","
             "\"enabled\":true",
             iccid[0], fx.smdp_name);
    char *u0 = op(0, f);
    /* PC1: the operator did not release it. */
    snprintf(f, sizeof f,
             "\"operation\":\"add_profile\",\"iccid\":\"%s\",\"matching_id\":"
             "\"11111-22222-33333-44444\",\"server\":\"%s\"",
             iccid[1], fx.smdp_name);
    char *u1 = op(1, f);
    /* PC2: discovery at the default SM-DP+, enabled on its own. */
    snprintf(f, sizeof f, "\"operation\":\"add_server\",\"server\":\"%s\",\"auto_enable\":true",
             fx.smdp_name);
    char *u2 = op(2, f);

    json_t *d = wait_verdict(u0);
    assert_string_equal(json_string_value(json_object_get(d, "verification")), "done");
    json_decref(d);
    sim_winpc *pc0 = sim_devsim_find_windows(fx.ds, fx.id[0]);
    assert_non_null(pc0);
    d = wait_verdict(u1);
    assert_string_equal(json_string_value(json_object_get(d, "verification")), "failed");
    assert_non_null(
        strstr(json_string_value(json_object_get(d, "detail")), "ProfileNotReleasedByOperator"));
    json_decref(d);
    d = wait_verdict(u2);
    assert_string_equal(json_string_value(json_object_get(d, "verification")), "done");
    json_decref(d);

    /* The diagnosis of PC1 says why, in words, and what to do. */
    char path[200];
    snprintf(path, sizeof path, "/v1/devices/%s/diagnosis", fx.id[1]);
    json_t *diag = get_json(path);
    assert_non_null(diag);
    assert_string_equal(json_string_value(json_object_get(diag, "kind")), "profile_not_released");
    assert_non_null(strstr(json_string_value(json_object_get(diag, "next_action")), "release"));
    json_decref(diag);

    /* PC3: the local UI closed, then a reset to factory state. */
    char *u3 = op(3, "\"operation\":\"local_ui\",\"local_ui_enabled\":false");
    char *u4 = op(3, "\"operation\":\"reset\"");
    d = wait_verdict(u4);
    assert_string_equal(json_string_value(json_object_get(d, "verification")), "done");
    json_decref(d);
    snprintf(path, sizeof path, "/v1/commands/%s", u3);
    json_t *c = get_json(path);
    json_t *e = json_object_get(json_object_get(c, "devices"), fx.id[3]);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "acknowledged");
    json_decref(c);
    /* A write to a read-only node is refused by the PC: 405 kept per item. */
    snprintf(f, sizeof f,
             "{\"udids\":[\"%s\"],\"uuid\":\"ro-1\",\"syncml\":\"<Replace><CmdID>ro-1</CmdID>"
             "<Item><Target><LocURI>./Device/Vendor/MSFT/eUICCs/%s/Identifier</LocURI></Target>"
             "<Data>x</Data></Item></Replace>\"}",
             fx.id[3], fx.eid[3]);
    json_decref(post_json("/v1/windows/commands", f, 201));
    for (int k = 0; k < 100; k++) {
        char st[32];
        api_entry_state(fx.ts.url, "ro-1", fx.id[3], st, NULL, NULL);
        if (strcmp(st, "error") == 0)
            break;
        pump(100);
    }
    c = get_json("/v1/commands/ro-1");
    e = json_object_get(json_object_get(c, "devices"), fx.id[3]);
    assert_string_equal(json_string_value(json_object_get(e, "state")), "error");
    assert_int_equal(json_integer_value(
                         json_object_get(json_array_get(json_object_get(e, "syncml"), 0), "code")),
                     405);
    json_decref(c);
    /* The PCs' messages and the queued commands were the strict SyncML
     * reader's, and libxml2 alone read each again with the same result
     * (the harness's check, svc_harness.c). */
    size_t plain = 0, other = 0;
    harness_syncml_counts(&plain, &other);
    assert_true(plain >= 10);
    free(u0);
    free(u1);
    free(u2);
    free(u3);
    free(u4);
}

/* Whether device |i|'s ledger holds a push that WNS answered 410. */
static bool ledger_has_410(int i)
{
    char epath[200];
    snprintf(epath, sizeof epath, "/v1/devices/%s/events?limit=500", fx.id[i]);
    json_t *ev = get_json(epath);
    json_t *list = json_is_array(ev) ? ev : json_object_get(ev, "events");
    bool saw_410 = false;
    size_t k;
    json_t *x;
    json_array_foreach(list, k, x)
    {
        const char *detail = json_string_value(json_object_get(x, "detail"));
        saw_410 |= detail && strstr(detail, "410") != NULL;
    }
    json_decref(ev);
    return saw_410;
}

/* WNS: an expired channel gets 410 and the device's push state is dead
 * until the PC reports a new channel (it gets one and starts a session to
 * report it at once, as a push client updates its server); then pushes
 * work again. */
static void test_wns_expiry_and_reregistration(void **state)
{
    (void)state;
    char path[200];
    snprintf(path, sizeof path, "/v1/devices/%s", fx.id[4]);
    json_t *d = get_json(path);
    assert_non_null(d);
    json_decref(d);
    sim_winpc *pc = sim_devsim_find_windows(fx.ds, fx.id[4]);
    assert_non_null(pc);
    /* The channel WNS gave the PC (and the PC reported) expires. */
    char channel[STORE_PUSH_TOKEN_MAX];
    assert_non_null(sim_winpc_channel_uri(pc));
    snprintf(channel, sizeof channel, "%s", sim_winpc_channel_uri(pc));
    assert_int_equal(wns_mock_expire_channel(fx.wns, channel, NULL), ESIM_OK);
    char body[300];
    snprintf(body, sizeof body,
             "{\"udids\":[\"%s\"],\"uuid\":\"w-1\",\"syncml\":\"<Get><CmdID>w-1</CmdID><Item>"
             "<Target><LocURI>./DevDetail/SwV</LocURI></Target></Item></Get>\"}",
             fx.id[4]);
    json_decref(post_json("/v1/windows/commands", body, 201));
    /* The push to the old channel is refused (410, in the ledger); the
     * dead state it leaves may last only until the PC's own session. */
    int k = 0;
    for (; k < 100 && !ledger_has_410(4); k++)
        pump(100);
    assert_true(k < 100);
    /* The PC's session (or a scheduled one, started here) re-registers. */
    for (k = 0; k < 200 && !api_device_ready(fx.ts.url, fx.id[4]); k++) {
        if (k % 30 == 0)
            sim_devsim_windows_sync(fx.ds, fx.id[4], NULL);
        pump(100);
    }
    assert_true(k < 200);
    char st[32] = "";
    for (k = 0; k < 100; k++) {
        api_entry_state(fx.ts.url, "w-1", fx.id[4], st, NULL, NULL);
        if (strcmp(st, "acknowledged") == 0)
            break;
        pump(100);
    }
    assert_string_equal(st, "acknowledged");
}

/* The service's requests to WNS (the token, the pushes of the tests
 * before this one), each on a new connection here, resume the TLS session
 * of an earlier one instead of a full handshake each (≈ 4.6 M instructions,
 * the mock's chain verified again): 93 for 60 PCs in a 300-device demo. */
static void test_wns_sessions_resume(void **state)
{
    (void)state;
    wns_mock_stats st;
    wns_mock_stats_get(fx.wns, &st);
    assert_true(st.notifications >= 3);
    assert_true(st.tls_full >= 1);
    assert_true(st.tls_resumed >= 1);
    assert_true(st.tls_resumed >= st.tls_full);
}

/* A campaign: its PCs get their eSIM by discovery (refresh) and are
 * verified through the Windows adapter; progress is shown per platform. */
static void test_campaign_on_windows(void **state)
{
    (void)state;
    esim_error err;
    char iccid[SIM_ICCID_MAX + 1];
    st_iccid(600, iccid);
    assert_int_equal(sim_smdp_add_order(fx.smdp, fx.eid[4], iccid, NULL, true, &err), ESIM_OK);
    char body[600];
    snprintf(body, sizeof body,
             "{\"name\":\"pcs\",\"steps\":[\"refresh\",\"verify\"],\"smdp_url\":\"https://%s\","
             "\"target\":{\"udids\":[\"%s\"]},\"settings\":{\"retry_base_s\":0.3,"
             "\"retry_max_s\":1,\"max_retries\":60,\"verify_attempts\":20}}",
             fx.smdp_name, fx.id[4]);
    json_t *c = post_json("/v1/campaigns", body, 201);
    char id[80];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(c, "id")));
    json_decref(c);
    char path[160];
    snprintf(path, sizeof path, "/v1/campaigns/%s", id);
    json_t *s = wait_campaign(path, NULL, NULL);
    json_t *w = json_object_get(json_object_get(s, "by_platform"), "windows");
    assert_non_null(w);
    assert_int_equal(json_integer_value(json_object_get(w, "devices")), 1);
    assert_int_equal(json_integer_value(json_object_get(w, "verified")), 1);
    json_decref(s);
}

/* The demo's PCs made to fail: the operator has no order for the PC's EID
 * on the SM-DP+ (FAULT_NO_ORDER in cli/cmd_demo.c), while its activation
 * code (EID, ICCID) is imported, so the campaign's verification Gets the
 * expected profile's State and ErrorDetail (404: discovery made no profile
 * node) and the server's DiscoveryState (4). The diagnosis names that
 * reading in the verification command's words, not only the first item
 * that failed ("Get …/State answered 404"). */
static void test_campaign_discovery_failed_diagnosis(void **state)
{
    (void)state;
    char iccid[SIM_ICCID_MAX + 1], body[700];
    st_iccid(900, iccid);
    snprintf(body, sizeof body, "%s,LPA:1$127.0.0.1$DEMO-000006,%s\n", fx.eid[5], iccid);
    json_t *j = NULL;
    assert_int_equal(api_call(fx.ts.url, TEST_TOKEN, "POST", "/v1/import/activation-codes", body,
                              "text/csv", &j),
                     200);
    assert_int_equal(json_integer_value(json_object_get(j, "imported")), 1);
    json_decref(j);
    snprintf(body, sizeof body,
             "{\"name\":\"no order\",\"steps\":[\"profile\",\"refresh\",\"verify\"],"
             "\"smdp_url\":\"https://%s\",\"target\":{\"udids\":[\"%s\"]},\"settings\":"
             "{\"retry_base_s\":0.3,\"retry_max_s\":1,\"max_retries\":12,"
             "\"verify_attempts\":3},\"policy\":{\"esim_modification\":\"deny\"}}",
             fx.smdp_name, fx.id[5]);
    json_t *c = post_json("/v1/campaigns", body, 201);
    char path[160];
    snprintf(path, sizeof path, "/v1/campaigns/%s", json_string_value(json_object_get(c, "id")));
    json_decref(c);
    json_t *s = wait_campaign(path, NULL, NULL);
    json_t *w = json_object_get(json_object_get(s, "by_platform"), "windows");
    assert_int_equal(json_integer_value(json_object_get(w, "failed")), 1);
    json_decref(s);

    snprintf(path, sizeof path, "/v1/devices/%s/diagnosis", fx.id[5]);
    json_t *diag = get_json(path);
    assert_non_null(diag);
    assert_string_equal(json_string_value(json_object_get(diag, "kind")), "nothing_released");
    assert_non_null(strstr(json_string_value(json_object_get(diag, "conclusion")),
                           "discovery at the SM-DP+ failed (DiscoveryState 4)"));
    /* The verification's words: the DiscoveryState it read, then the 404
     * that follows from it; no command's words stop at the 404. */
    bool read_discovery = false;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(diag, "commands"), i, e)
    {
        const char *words = json_string_value(json_object_get(e, "error"));
        if (!words)
            continue;
        if (strstr(words, "/State answered 404"))
            assert_non_null(strstr(words, "DiscoveryState 4 (Failed)"));
        read_discovery |=
            strncmp(words, "DiscoveryState 4 (Failed): discovery at the SM-DP+ failed", 57) == 0 &&
            strstr(words, "/DiscoveryState; so Get ") != NULL;
    }
    assert_true(read_discovery);
    /* The commands check says it too. */
    json_array_foreach(json_object_get(diag, "checks"), i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "name")), "commands") == 0)
            assert_non_null(strstr(json_string_value(json_object_get(e, "detail")),
                                   "answered DiscoveryState 4 (Failed)"));
    }
    json_decref(diag);
}

/* The iPhone of test_mixed_campaign: polls and acknowledges what it gets. */
typedef struct {
    test_device *dev;
    bool got_refresh;
} phone_poll;

static void poll_phone(void *arg)
{
    phone_poll *p = arg;
    esim_cmd_parsed next = {0};
    assert_int_equal(device_result(p->dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    if (next.command_uuid[0]) {
        p->got_refresh |= strcmp(next.request_type, "RefreshCellularPlans") == 0;
        esim_cmd_parsed after = {0};
        assert_int_equal(device_result(p->dev, ESIM_STATUS_ACKNOWLEDGED, next.command_uuid, &after),
                         200);
        esim_cmd_parsed_free(&after);
    }
    esim_cmd_parsed_free(&next);
}

/* One campaign for an iPhone and a PC together: each gets its platform's
 * command (RefreshCellularPlans; DownloadServers with AutoEnable), and the
 * summary shows progress per platform. */
static void test_mixed_campaign(void **state)
{
    (void)state;
    esim_error err;
    char iccid[SIM_ICCID_MAX + 1];
    st_iccid(700, iccid);
    assert_int_equal(sim_smdp_add_order(fx.smdp, fx.eid[3], iccid, NULL, true, &err), ESIM_OK);
    test_device phone;
    device_new(&phone, &fx.env, "00008110-000000000000E2E1", fx.ts.url);
    phone.ca_file = fx.ca;
    device_enroll(&phone);
    char body[700];
    snprintf(body, sizeof body,
             "{\"name\":\"mixed\",\"steps\":[\"refresh\"],\"smdp_url\":\"https://%s\","
             "\"target\":{\"udids\":[\"%s\",\"%s\"]},\"settings\":{\"retry_base_s\":0.3,"
             "\"retry_max_s\":1}}",
             fx.smdp_name, fx.id[3], phone.udid);
    json_t *c = post_json("/v1/campaigns", body, 201);
    char id[80], path[160];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(c, "id")));
    json_decref(c);
    snprintf(path, sizeof path, "/v1/campaigns/%s", id);
    phone_poll poll = {.dev = &phone};
    json_t *s = wait_campaign(path, poll_phone, &poll);
    assert_true(poll.got_refresh);
    assert_string_equal(json_string_value(json_object_get(s, "state")), "finished");
    json_t *bp = json_object_get(s, "by_platform");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(bp, "apple"), "devices")),
                     1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(bp, "apple"), "done")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(bp, "windows"), "devices")),
                     1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(bp, "windows"), "done")),
                     1);
    json_decref(s);
    /* The PC really discovered and enabled its profile. */
    sim_winpc *pc = sim_devsim_find_windows(fx.ds, fx.id[3]);
    assert_non_null(pc);
    device_free(&phone);
}

/* Runs `esim-mdm windows ARGS` against the service (|input| on its stdin,
 * may be NULL); returns its exit status and *out its stdout (caller frees). */
static int cli(const char *args, const char *input, char **out)
{
    const char *bin = getenv("ESIM_MDM_BIN");
    if (!bin)
        fail_msg("ESIM_MDM_BIN is not set (run the test through ctest)");
    char in_path[700] = "/dev/null", cmd[3000];
    if (input) {
        snprintf(in_path, sizeof in_path, "%s/cli-stdin", fx.dir);
        assert_int_equal(esim_write_file_atomic(in_path, input, strlen(input), 0600, NULL),
                         ESIM_OK);
    }
    snprintf(cmd, sizeof cmd,
             "'%s' windows %s --server %s --token-file '%s' --cacert '%s' <'%s' 2>/dev/null", bin,
             args, fx.ts.url, fx.token_file, fx.ca, in_path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    esim_buf b = {0};
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0)
        esim_buf_append(&b, buf, n);
    esim_buf_append(&b, "", 1);
    int st = pclose(p);
    *out = (char *)b.data;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* `esim-mdm windows esim|command|status`: the three routes from the command
 * line, --json giving the API's answer and nothing else. */
static void test_cli(void **state)
{
    (void)state;
    char *out = NULL, args[600];
    snprintf(args, sizeof args, "esim local-ui --udid %s --local-ui off --json", fx.id[1]);
    assert_int_equal(cli(args, NULL, &out), 0);
    json_t *j = json_loads(out, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "operation")), "local_ui");
    char uuid[80];
    snprintf(uuid, sizeof uuid, "%s",
             json_string_value(json_object_get(json_array_get(json_object_get(j, "commands"), 0),
                                               "command_uuid")));
    json_decref(j);
    free(out);
    /* The PC gets it through WNS (waited for through the API); then the
     * CLI's status shows the item's code. */
    char path[160];
    snprintf(path, sizeof path, "/v1/commands/%s", uuid);
    bool acked = false;
    for (int k = 0; k < 200 && !acked; k++) {
        json_t *c = get_json(path);
        acked = c && json_integer_value(
                         json_object_get(json_object_get(c, "counts"), "acknowledged")) == 1;
        json_decref(c);
        if (!acked)
            pump(50);
    }
    assert_true(acked);
    snprintf(args, sizeof args, "status %s --json", uuid);
    assert_int_equal(cli(args, NULL, &out), 0);
    j = json_loads(out, 0, NULL);
    free(out);
    json_t *d = json_array_get(json_object_get(j, "devices"), 0);
    assert_string_equal(json_string_value(json_object_get(d, "state")), "acknowledged");
    json_t *item = json_array_get(json_object_get(d, "syncml"), 0);
    assert_string_equal(json_string_value(json_object_get(item, "cmd")), "Replace");
    assert_int_equal(json_integer_value(json_object_get(item, "code")), 200);
    json_decref(j);
    /* The table form names the item and its code. */
    snprintf(args, sizeof args, "status %s", uuid);
    assert_int_equal(cli(args, NULL, &out), 0);
    assert_non_null(strstr(out, "Replace"));
    assert_non_null(strstr(out, "200"));
    assert_non_null(strstr(out, "Policies/LocalUIEnabled"));
    free(out);

    /* A raw SyncML Get from stdin; its Results data comes back. */
    snprintf(args, sizeof args, "command --udid %s --syncml - --uuid cli-get-1 --json", fx.id[1]);
    assert_int_equal(cli(args,
                         "<Get><CmdID>cli-get-1</CmdID><Item><Target><LocURI>./Device/Vendor/MSFT/"
                         "eUICCs</LocURI></Target></Item></Get>",
                         &out),
                     0);
    j = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "command_uuid")), "cli-get-1");
    json_decref(j);
    free(out);
    acked = false;
    for (int k = 0; k < 200 && !acked; k++) {
        json_t *c = get_json("/v1/commands/cli-get-1");
        acked = c && json_integer_value(
                         json_object_get(json_object_get(c, "counts"), "acknowledged")) == 1;
        json_decref(c);
        if (!acked)
            pump(50);
    }
    assert_true(acked);
    assert_int_equal(cli("status cli-get-1 --json", NULL, &out), 0);
    j = json_loads(out, 0, NULL);
    free(out);
    item = json_array_get(
        json_object_get(json_array_get(json_object_get(j, "devices"), 0), "syncml"), 0);
    const char *data = json_string_value(json_object_get(item, "data"));
    bool got = data && strstr(data, fx.eid[1]) != NULL;
    json_decref(j);
    assert_true(got);

    /* Bad input: refused by the service (400: exit 2, field named on
     * stderr) or here; nothing queued. */
    snprintf(args, sizeof args,
             "esim add-profile --udid %s --iccid 8944000000000000001 --smdp smdp.example.com "
             "--matching-id not-a-matching-id",
             fx.id[1]);
    assert_int_equal(cli(args, NULL, &out), 2);
    free(out);
    snprintf(args, sizeof args, "esim frobnicate --udid %s", fx.id[1]);
    assert_int_equal(cli(args, NULL, &out), 2);
    free(out);
    assert_int_equal(cli("esim reset", NULL, &out), 2); /* no --udid */
    free(out);
    assert_int_equal(cli("status", NULL, &out), 2);
    free(out);
    snprintf(args, sizeof args, "esim local-ui --udid %s --local-ui maybe", fx.id[1]);
    assert_int_equal(cli(args, NULL, &out), 2);
    free(out);
}

/* Restarts the service on the same port and data directory. */
static void restart_service(int64_t verify_interval_ms)
{
    int port = atoi(strrchr(fx.ts.url, ':') + 1);
    harness_stop(&fx.ts);
    static char listen[32];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    fx.cfg.listen = listen;
    fx.cfg.windows_verify_interval_ms = verify_interval_ms;
    harness_start(&fx.ts, &fx.cfg);
}

/* The service restarts while it verifies an operation: the queued poll,
 * the ledger and the wake-up for the poll (a push owed in the store) are
 * all in the store, so after the restart the PC (which would not poll on
 * its own for 10 minutes) is woken and the verification ends "done". */
static void test_verification_survives_restart(void **state)
{
    (void)state;
    /* Polls 3 s apart: the restart comes well before the first is due. */
    restart_service(3000);
    esim_error err;
    char iccid[SIM_ICCID_MAX + 1], f[600];
    st_iccid(800, iccid);
    assert_int_equal(
        sim_smdp_add_order(fx.smdp, fx.eid[0], iccid, "2B3C4-D5E6F-7A8B9-C0D1E", true, &err),
        ESIM_OK);
    snprintf(f, sizeof f,
             "\"operation\":\"add_profile\",\"iccid\":\"%s\",\"matching_id\":"
             "\"2B3C4-D5E6F-7A8B9-C0D1E\",\"server\":\"%s\",\"enabled\":false",
             iccid, fx.smdp_name);
    char *uuid = op(0, f);
    char path[160];
    snprintf(path, sizeof path, "/v1/windows/esim/%s", uuid);
    /* Until the Add is accepted and the first poll queued. */
    bool pending = false;
    for (int k = 0; k < 200 && !pending; k++) {
        json_t *j = get_json(path);
        const char *v = json_string_value(
            json_object_get(json_array_get(json_object_get(j, "devices"), 0), "verification"));
        pending = v && strcmp(v, "pending") == 0;
        json_decref(j);
        if (!pending)
            pump(50);
    }
    assert_true(pending);
    restart_service(300);
    json_t *d = wait_verdict(uuid);
    assert_string_equal(json_string_value(json_object_get(d, "verification")), "done");
    json_decref(d);
    free(uuid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_operation),
        cmocka_unit_test(test_wns_expiry_and_reregistration),
        cmocka_unit_test(test_wns_sessions_resume),
        cmocka_unit_test(test_campaign_on_windows),
        cmocka_unit_test(test_campaign_discovery_failed_diagnosis),
        cmocka_unit_test(test_mixed_campaign),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_verification_survives_restart),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
