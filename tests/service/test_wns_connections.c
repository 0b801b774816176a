/*
 * test_wns_connections.c — the service's WNS client keeps its connections
 * few: a burst of pushes to more PCs than it opens connections to one host
 * (32) waits for those connections instead of opening one each, so the
 * WNS mock sees at most 32 TLS handshakes for the 48 pushes of one API
 * call; and the ones waiting for a connection are not timed out while
 * they wait: the mock holds each answer ANSWER_DELAY_MS, the service's
 * timeout is PUSH_TIMEOUT_MS (between one and two delays), so a push that
 * counted its wait would time out and be retried; and the CA file of
 * --wns-ca is read once, its parsed store kept for the next connections:
 * the burst's new connections verify the mock after the file is gone.
 * Without --wns-ca the same burst against the system's store (OpenSSL's
 * default locations, here SSL_CERT_FILE naming a copy of the test CA and
 * SSL_CERT_DIR an empty directory): loaded once at the start, so the
 * burst's new connections verify the mock after that copy is gone; and
 * with another CA as the system's store the mock is refused (no push
 * delivered). The service (TLS, WNS client) runs on its own thread; the
 * simulated PCs and the WNS mock (which keeps connections alive, as WNS
 * does) on this thread's loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "service/svc_harness.h"
#include "tests/sim/sim_test.h"
#include "wns/wns_mock.h"

#define NPC 48
#define HOST_CONNECTIONS 32 /* service/wns.c, WNS_IN_FLIGHT */
#define ANSWER_DELAY_MS 2000
#define PUSH_TIMEOUT_MS 3000
#define DELIVERED "esim_mdm_wns_outcomes_total{outcome=\"delivered\"}"
#define RETRIED "esim_mdm_wns_outcomes_total{outcome=\"retried\"}"
#define FAILED "esim_mdm_wns_outcomes_total{outcome=\"failed\"}"
#define SEED 4242

static struct {
    harness_env env;
    char *dir;
    char pki_dir[600];
    sim_pki *pki;
    struct event_base *base; /* the simulators' loop (this thread) */
    wns_mock *wns;
    sim_devsim *ds;
    test_service ts;
    char data[320];
    char id[NPC][65];
    char wns_ca[700]; /* the service's --wns-ca (or SSL_CERT_FILE), removed mid-test */
    int npc;
} fx;

/* Where the service's WNS client finds its CA: --wns-ca; the system's
 * store, holding the test CA; the system's store, holding another CA. */
static enum { CA_OPTION, CA_SYSTEM, CA_SYSTEM_OTHER } mode;

static void pump(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(fx.base, &tv);
    event_base_dispatch(fx.base);
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
    static char cert[700], key[700], ca[700], dca[700], secret[700], token_url[128];
    snprintf(cert, sizeof cert, "%s/server.pem", fx.pki_dir);
    snprintf(key, sizeof key, "%s/server.key", fx.pki_dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", fx.pki_dir);
    snprintf(dca, sizeof dca, "%s/device-ca.pem", fx.pki_dir);
    snprintf(fx.wns_ca, sizeof fx.wns_ca, "%s/wns-ca.pem", fx.dir);
    fx.npc = mode == CA_SYSTEM_OTHER ? 1 : NPC;
    char trusted[700];
    snprintf(trusted, sizeof trusted, "%s", ca);
    sim_pki *other = NULL;
    if (mode == CA_SYSTEM_OTHER) {
        char other_dir[700];
        snprintf(other_dir, sizeof other_dir, "%s/other-pki", fx.dir);
        if (sim_pki_open(other_dir, &other, NULL) != ESIM_OK)
            return -1;
        snprintf(trusted, sizeof trusted, "%s", sim_pki_ca_file(other));
    }
    esim_buf pem = {0};
    if (esim_read_file(trusted, 1 << 16, &pem, NULL) != ESIM_OK ||
        esim_write_file_atomic(fx.wns_ca, pem.data, pem.len, 0644, NULL) != ESIM_OK)
        return -1;
    esim_buf_free(&pem);
    sim_pki_free(other);
    if (mode != CA_OPTION && !harness_use_system_store(fx.dir, fx.wns_ca))
        return -1;
    wns_mock_config wc;
    wns_mock_config_init(&wc);
    wc.listen = "127.0.0.1:0";
    wc.delivery_listen = "127.0.0.1:0";
    wc.tls_cert = cert;
    wc.tls_key = key;
    wc.client_id = "ms-app://s-1-15-2-esim-mdm-test";
    wc.client_secret = "wns-secret-0123456789";
    wc.answer_delay_ms = ANSWER_DELAY_MS;
    if (wns_mock_new(fx.base, &wc, &fx.wns, &err) != ESIM_OK)
        return -1;
    snprintf(secret, sizeof secret, "%s/wns.secret", fx.dir);
    if (esim_write_file_atomic(secret, "wns-secret-0123456789\n", 22, 0600, NULL) != ESIM_OK)
        return -1;
    snprintf(token_url, sizeof token_url, "https://127.0.0.1:%d/accesstoken.srf",
             wns_mock_port(fx.wns, WNS_MOCK_PORT_HTTPS));

    esim_service_config cfg;
    harness_config(&fx.env, "wns-conns", &cfg, fx.data);
    cfg.tls_cert_path = cert;
    cfg.tls_key_path = key;
    cfg.device_ca_path = dca;
    cfg.wns_token_url = token_url;
    cfg.wns_client_id = wc.client_id;
    cfg.wns_secret_path = secret;
    cfg.wns_ca_path = mode == CA_OPTION ? fx.wns_ca : NULL;
    cfg.wns_timeout_ms = PUSH_TIMEOUT_MS;
    harness_start(&fx.ts, &cfg);
    harness_set_api_ca(ca);

    char url[160], deliv[64];
    snprintf(url, sizeof url, "%s/ManagementServer/MDM.svc", fx.ts.url);
    snprintf(deliv, sizeof deliv, "http://127.0.0.1:%d",
             wns_mock_port(fx.wns, WNS_MOCK_PORT_DELIVERY));
    for (unsigned i = 0; i < NPC; i++)
        sim_devsim_windows_id(SEED, i, fx.id[i]);
    sim_devsim_config dc = {.server_url = url,
                            .pki_dir = fx.pki_dir,
                            .devices = (unsigned)fx.npc,
                            .windows_pcs = (unsigned)fx.npc,
                            .wns_url = deliv,
                            .windows_poll_ms = 600000,
                            .seed = SEED};
    if (sim_devsim_new(fx.base, &dc, &fx.ds, &err) != ESIM_OK) {
        fprintf(stderr, "devsim: %s\n", err.msg);
        return -1;
    }
    for (int i = 0; i < fx.npc; i++) {
        int k = 0;
        for (; k < 600 && !api_device_ready(fx.ts.url, fx.id[i]); k++) {
            if (k % 20 == 19)
                sim_devsim_windows_sync(fx.ds, fx.id[i], NULL);
            pump(50);
        }
        if (k == 600) {
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
    event_base_free(fx.base);
    sim_pki_free(fx.pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    harness_use_system_store(NULL, NULL);
    harness_env_teardown(&fx.env);
    return 0;
}

/* One command for PCs |first| to |first| + |n| - 1, pushed at once: how
 * many of the pushes were delivered (waiting until all are, or one
 * failed). */
static long long push_all(int first, int n)
{
    long long delivered_before = api_metric(fx.ts.url, DELIVERED);
    long long failed_before = api_metric(fx.ts.url, FAILED);
    esim_buf body = {0};
    esim_buf_append_str(&body,
                        "{\"operation\":\"local_ui\",\"local_ui_enabled\":false,\"udids\":[");
    for (int i = first; i < first + n; i++)
        esim_buf_printf(&body, "%s\"%s\"", i > first ? "," : "", fx.id[i]);
    esim_buf_append_str(&body, "]}");
    esim_buf_append(&body, "", 1);
    json_t *j = NULL;
    long code = api_call(fx.ts.url, TEST_TOKEN, "POST", "/v1/windows/esim", (const char *)body.data,
                         "application/json", &j);
    esim_buf_free(&body);
    if (code != 201) {
        char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
        fail_msg("POST /v1/windows/esim: %ld %s", code, text ? text : "");
    }
    json_decref(j);
    /* Every push answered (the mock answers from this thread's loop). */
    long long delivered = 0;
    for (int k = 0; k < 400 && delivered < n && api_metric(fx.ts.url, FAILED) == failed_before;
         k++) {
        pump(50);
        delivered = api_metric(fx.ts.url, DELIVERED) - delivered_before;
    }
    return delivered;
}

/* One push first (the token and a first connection, which reads the CA
 * file), the file removed, then one command for every other PC, pushed at
 * once: every push delivered, over at most HOST_CONNECTIONS new connections
 * (handshakes, full or resumed), at least one of them made after the file
 * was gone, and none retried (the last ones waited a whole delay for a
 * connection; a connection that read the file again would have failed). */
static void test_burst_reuses_connections(void **state)
{
    (void)state;
    assert_int_equal(push_all(0, 1), 1);
    assert_int_equal(unlink(fx.wns_ca), 0);
    wns_mock_stats before, after;
    wns_mock_stats_get(fx.wns, &before);
    long long retried_before = api_metric(fx.ts.url, RETRIED);
    long long delivered = push_all(1, NPC - 1);
    wns_mock_stats_get(fx.wns, &after);
    assert_int_equal(delivered, NPC - 1);
    assert_int_equal(after.accepted - before.accepted, NPC - 1);
    assert_int_equal(api_metric(fx.ts.url, RETRIED), retried_before);
    uint64_t handshakes =
        (after.tls_full + after.tls_resumed) - (before.tls_full + before.tls_resumed);
    print_message("%d pushes over %llu new connections\n", NPC - 1, (unsigned long long)handshakes);
    assert_true(handshakes >= 1);
    assert_true(handshakes <= HOST_CONNECTIONS);
}

/* The system's store holds another CA than the mock's: the token request
 * is refused at the handshake, so the push fails (no access token) and
 * nothing reaches the mock. */
static void test_other_ca_refused(void **state)
{
    (void)state;
    wns_mock_stats before, after;
    wns_mock_stats_get(fx.wns, &before);
    long long failed_before = api_metric(fx.ts.url, FAILED);
    long long delivered = push_all(0, 1);
    wns_mock_stats_get(fx.wns, &after);
    assert_int_equal(delivered, 0);
    assert_int_equal(api_metric(fx.ts.url, FAILED), failed_before + 1);
    assert_int_equal(after.token_requests, before.token_requests);
    assert_int_equal(after.accepted, before.accepted);
}

static int setup_option(void **state)
{
    mode = CA_OPTION;
    return setup(state);
}

static int setup_system(void **state)
{
    mode = CA_SYSTEM;
    return setup(state);
}

static int setup_system_other(void **state)
{
    mode = CA_SYSTEM_OTHER;
    return setup(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_reuses_connections),
    };
    const struct CMUnitTest refused[] = {
        cmocka_unit_test(test_other_ca_refused),
    };
    int failed = cmocka_run_group_tests_name("wns_ca_option", tests, setup_option, teardown);
    failed += cmocka_run_group_tests_name("system_store", tests, setup_system, teardown);
    failed +=
        cmocka_run_group_tests_name("system_store_other_ca", refused, setup_system_other, teardown);
    return failed;
}
