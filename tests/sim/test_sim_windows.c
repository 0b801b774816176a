/*
 * test_sim_windows.c — simulated Windows PCs in the device simulator, end to
 * end on one event loop: the WNS mock, the SM-DP+ simulator, and a scripted
 * OMA-DM server in this file (HTTPS, client certificates chained to the
 * device CA, the MS-MDM session rules checked on every message) standing in
 * for the service's endpoint. Every eUICCs CSP operation, downloads over
 * ES9+ with realistic failures, discovery with AutoEnable, LocalUIEnabled
 * against a user's deletion, reset to factory state, WNS wake-ups, and a
 * channel that expires and is registered again.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <openssl/ssl.h>

#include "tests/sim/sim_test.h"
#include "tests/sim/omadm_server.h"
#include "wns/wns_mock.h"

#pragma GCC diagnostic ignored "-Wformat-truncation"

#define NPC 3
#define SEED 4242

static struct {
    char *dir;
    char pki_dir[600];
    sim_pki *pki;
    struct event_base *base;
    omadm_server *os;
} srv;

typedef omadm_pc pcrec;
#define answer_of omadm_answer
#define queue omadm_queue
#define add omadm_add
#define get omadm_get

/* ---- helpers ------------------------------------------------------------------------ */

static bool run_until(bool (*cond)(void *), void *arg)
{
    int64_t start = esim_mono_ms();
    while (!cond(arg) && esim_mono_ms() - start < 40000)
        event_base_loop(srv.base, EVLOOP_ONCE);
    return cond(arg);
}

typedef struct {
    pcrec *p;
    const char *ref;
    const char *want; /* NULL: any answer */
    int sessions;
} wait_ans;

static bool has_answer(void *arg)
{
    wait_ans *w = arg;
    const char *d = answer_of(w->p, w->ref, NULL);
    return d && (!w->want || strcmp(d, w->want) == 0);
}

static bool sessions_at_least(void *arg)
{
    wait_ans *w = arg;
    return w->p->sessions >= w->sessions && !w->p->in_session;
}

/* A raw WNS notification to |uri|, as the service sends it; the HTTP status. */
static long wns_push(sim_http *h, const char *https, const char *uri)
{
    static const char *const fh[] = {"Content-Type: application/x-www-form-urlencoded"};
    const char *form = "grant_type=client_credentials&client_id=ms-app%3A%2F%2FS-1-15-2-9&"
                       "client_secret=x&scope=notify.windows.com";
    char url[128];
    snprintf(url, sizeof url, "%s/accesstoken.srf", https);
    st_reply w = {0};
    sim_http_request req = {.method = "POST",
                            .url = url,
                            .headers = fh,
                            .n_headers = 1,
                            .body = form,
                            .body_len = strlen(form),
                            .ca_file = sim_pki_ca_file(srv.pki)};
    sim_http_send(h, &req, st_reply_cb, &w, NULL);
    st_run_until(srv.base, &w.done);
    json_t *j = json_loadb((const char *)w.body.data, w.body.len, 0, NULL);
    char auth[256];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s",
             json_string_value(json_object_get(j, "access_token")));
    json_decref(j);
    const char *ph[] = {auth, "X-WNS-Type: wns/raw", "Content-Type: application/octet-stream"};
    sim_http_request p = {.method = "POST",
                          .url = uri,
                          .headers = ph,
                          .n_headers = 3,
                          .body = "wake",
                          .body_len = 4,
                          .ca_file = sim_pki_ca_file(srv.pki)};
    w.done = false;
    sim_http_send(h, &p, st_reply_cb, &w, NULL);
    st_run_until(srv.base, &w.done);
    esim_buf_free(&w.body);
    return w.err == ESIM_OK ? w.status : -1;
}

static int setup(void **state)
{
    (void)state;
    srv.dir = st_tempdir();
    snprintf(srv.pki_dir, sizeof srv.pki_dir, "%s/pki", srv.dir);
    if (sim_pki_open(srv.pki_dir, &srv.pki, NULL) != ESIM_OK)
        return -1;
    srv.base = event_base_new();
    char ids[NPC][65];
    for (int i = 0; i < NPC; i++)
        sim_devsim_windows_id(SEED, (unsigned)i, ids[i]);
    srv.os = omadm_server_new(srv.base, srv.pki_dir, ids, NPC);
    return srv.os ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    omadm_server_free(srv.os);
    event_base_free(srv.base);
    sim_pki_free(srv.pki);
    st_rmrf(srv.dir);
    free(srv.dir);
    xmlCleanupParser();
    return 0;
}

static void test_windows_end_to_end(void **state)
{
    (void)state;
    esim_error err;
    /* The SM-DP+ and its orders: PC0 by matching ID (released), PC1's not
     * released, PC2's found by discovery (default SM-DP+ by EID). */
    sim_smdp *smdp = NULL;
    sim_smdp_config sc = {.pki = srv.pki};
    assert_int_equal(sim_smdp_new(srv.base, &sc, &smdp, &err), ESIM_OK);
    char eid[NPC][ESIM_EID_LEN + 1], udid[65], iccid[4][SIM_ICCID_MAX + 1];
    for (int i = 0; i < NPC; i++)
        sim_devsim_identity(SEED, (unsigned)i, udid, eid[i]);
    for (int i = 0; i < 4; i++)
        st_iccid(900 + (unsigned)i, iccid[i]);
    assert_int_equal(
        sim_smdp_add_order(smdp, eid[0], iccid[0], "1A2B3-C4D5E-6F7A8-9B0C1", true, &err), ESIM_OK);
    assert_int_equal(
        sim_smdp_add_order(smdp, eid[1], iccid[1], "11111-22222-33333-44444", false, &err),
        ESIM_OK);
    assert_int_equal(sim_smdp_add_order(smdp, eid[2], iccid[2], NULL, true, &err), ESIM_OK);
    char smdp_name[64];
    snprintf(smdp_name, sizeof smdp_name, "127.0.0.1:%u", sim_smdp_port(smdp));

    /* The WNS mock. */
    wns_mock_config wc;
    wns_mock_config_init(&wc);
    char cert[700], key[700];
    snprintf(cert, sizeof cert, "%s/server.pem", srv.pki_dir);
    snprintf(key, sizeof key, "%s/server.key", srv.pki_dir);
    wc.listen = "127.0.0.1:0";
    wc.delivery_listen = "127.0.0.1:0";
    wc.tls_cert = cert;
    wc.tls_key = key;
    wns_mock *wns = NULL;
    assert_int_equal(wns_mock_new(srv.base, &wc, &wns, &err), ESIM_OK);
    char wns_https[64], wns_deliv[64], url[128];
    snprintf(wns_https, sizeof wns_https, "https://127.0.0.1:%d",
             wns_mock_port(wns, WNS_MOCK_PORT_HTTPS));
    snprintf(wns_deliv, sizeof wns_deliv, "http://127.0.0.1:%d",
             wns_mock_port(wns, WNS_MOCK_PORT_DELIVERY));
    snprintf(url, sizeof url, "https://127.0.0.1:%d/ManagementServer/MDM.svc", srv.os->port);

    /* Three PCs; they poll every 60 s, so what happens sooner is WNS. The
     * SM-DP+'s name as the service would write it (an FQDN, no port) is
     * resolved to the simulator's address, as DNS would. */
    char resolve_entry[128];
    snprintf(resolve_entry, sizeof resolve_entry, "smdp.example.com=%s", smdp_name);
    const char *resolve[] = {resolve_entry};
    sim_devsim_config dc = {.server_url = url,
                            .pki_dir = srv.pki_dir,
                            .devices = NPC,
                            .windows_pcs = NPC,
                            .wns_url = wns_deliv,
                            .seed = SEED,
                            .smdp_resolve = resolve,
                            .n_smdp_resolve = 1};
    sim_devsim *ds = NULL;
    assert_int_equal(sim_devsim_new(srv.base, &dc, &ds, &err), ESIM_OK);
    assert_int_equal(sim_devsim_windows_count(ds), NPC);
    sim_http *h = NULL;
    assert_int_equal(sim_http_new(srv.base, &h, &err), ESIM_OK);

    /* First sessions: each PC is known, with its channel URI from the mock. */
    for (int i = 0; i < NPC; i++) {
        wait_ans w = {.p = &srv.os->pcs[i], .sessions = 1};
        assert_true(run_until(sessions_at_least, &w));
    }
    assert_int_equal(srv.os->cn_mismatch, 0);
    /* Channels can arrive after the first session: the PC starts a second
     * one to report its channel. */
    for (int i = 0; i < NPC; i++) {
        wait_ans w = {.p = &srv.os->pcs[i], .sessions = 2};
        if (!srv.os->pcs[i].channel[0])
            assert_true(run_until(sessions_at_least, &w));
        assert_non_null(strstr(srv.os->pcs[i].channel, "/?token="));
    }

    char base0[256], base1[256], base2[256], u[512];
    snprintf(base0, sizeof base0, "./Device/Vendor/MSFT/eUICCs/%s", eid[0]);
    snprintf(base1, sizeof base1, "./Device/Vendor/MSFT/eUICCs/%s", eid[1]);
    snprintf(base2, sizeof base2, "./Vendor/MSFT/eUICCs/%s", eid[2]);

    /* PC0: the eUICC node, then a profile by activation code, enabled. */
    pcrec *p0 = &srv.os->pcs[0];
    get(p0, "list", "./Device/Vendor/MSFT/eUICCs");
    snprintf(u, sizeof u, "%s/Identifier", base0);
    get(p0, "ident", u);
    snprintf(u, sizeof u, "%s/Profiles/%s", base0, iccid[0]);
    add(p0, "p-node", u, NULL, NULL);
    snprintf(u, sizeof u, "%s/Profiles/%s/ServerName", base0, iccid[0]);
    add(p0, "p-server", u, "chr", "smdp.example.com"); /* found through --smdp-resolve */
    snprintf(u, sizeof u, "%s/Profiles/%s/MatchingID", base0, iccid[0]);
    add(p0, "p-mid", u, "chr", "1A2B3-C4D5E-6F7A8-9B0C1");
    snprintf(u, sizeof u, "%s/Profiles/%s/IsEnabled", base0, iccid[0]);
    add(p0, "p-enabled", u, "bool", "true");
    int before = p0->sessions;
    assert_int_equal(wns_push(h, wns_https, p0->channel), 200);
    wait_ans w0 = {.p = p0, .sessions = before + 1};
    assert_true(run_until(sessions_at_least, &w0));
    assert_true(p0->alert1200 >= 1);
    int code = 0;
    assert_string_equal(answer_of(p0, "list", &code), eid[0]);
    assert_int_equal(code, 200);
    assert_string_equal(answer_of(p0, "ident", NULL), eid[0]);
    answer_of(p0, "p-node", &code);
    assert_int_equal(code, 200);
    answer_of(p0, "p-mid", &code);
    assert_int_equal(code, 200);
    /* 200 means accepted: the server reads State in later sessions until 2. */
    snprintf(u, sizeof u, "%s/Profiles/%s/State", base0, iccid[0]);
    char ref[32];
    wait_ans ws = {.p = p0, .ref = ref, .want = "2"};
    for (int k = 0; k < 50 && !has_answer(&ws); k++) {
        snprintf(ref, sizeof ref, "state-%d", k);
        get(p0, ref, u);
        assert_int_equal(wns_push(h, wns_https, p0->channel), 200);
        wait_ans wa = {.p = p0, .ref = ref};
        assert_true(run_until(has_answer, &wa));
        if (!has_answer(&ws)) {
            /* Installing: wait a moment of loop time before asking again. */
            struct timeval tv = {0, 200000};
            event_base_loopexit(srv.base, &tv);
            event_base_dispatch(srv.base);
        }
    }
    assert_true(has_answer(&ws));
    sim_winpc *pc0 = sim_devsim_find_windows(ds, p0->id);
    assert_non_null(pc0);
    const sim_profile *en = sim_euicc_enabled(sim_winpc_euicc_const(pc0));
    assert_non_null(en);
    assert_string_equal(en->iccid, iccid[0]);

    /* PC1: three realistic failures, each ErrorDetail in words of the CSP. */
    pcrec *p1 = &srv.os->pcs[1];
    struct {
        const char *iccid, *server, *mid;
        const char *want;
    } fails[] = {
        {iccid[1], smdp_name, "11111-22222-33333-44444", "12"},     /* not released */
        {iccid[3], smdp_name, "FFFFF-FFFFF-FFFFF-FFFFF", "6"},      /* unknown matching ID */
        {iccid[2], "127.0.0.1:1", "AAAAA-BBBBB-CCCCC-DDDDD", "14"}, /* unreachable */
    };
    for (int f = 0; f < 3; f++) {
        char id[32];
        snprintf(u, sizeof u, "%s/Profiles/%s", base1, fails[f].iccid);
        snprintf(id, sizeof id, "f%d-node", f);
        add(p1, id, u, NULL, NULL);
        snprintf(u, sizeof u, "%s/Profiles/%s/ServerName", base1, fails[f].iccid);
        snprintf(id, sizeof id, "f%d-server", f);
        add(p1, id, u, "chr", fails[f].server);
        snprintf(u, sizeof u, "%s/Profiles/%s/MatchingID", base1, fails[f].iccid);
        snprintf(id, sizeof id, "f%d-mid", f);
        add(p1, id, u, "chr", fails[f].mid);
    }
    /* Also a MatchingID outside the pattern, refused at once (the one set stays). */
    snprintf(u, sizeof u, "%s/Profiles/%s/MatchingID", base1, iccid[1]);
    queue(p1,
          "<Replace><CmdID>bad-mid</CmdID><Item><Target><LocURI>%s</LocURI></Target><Data>"
          "LPA:1$x$y</Data></Item></Replace>",
          u);
    assert_int_equal(wns_push(h, wns_https, p1->channel), 200);
    wait_ans w1 = {.p = p1, .ref = "f2-mid"};
    assert_true(run_until(has_answer, &w1));
    answer_of(p1, "bad-mid", &code);
    assert_int_equal(code, 400);
    for (int f = 0; f < 3; f++) {
        snprintf(u, sizeof u, "%s/Profiles/%s/ErrorDetail", base1, fails[f].iccid);
        wait_ans we = {.p = p1, .ref = ref, .want = fails[f].want};
        for (int k = 0; k < 50 && !has_answer(&we); k++) {
            snprintf(ref, sizeof ref, "err%d-%d", f, k);
            get(p1, ref, u);
            assert_int_equal(wns_push(h, wns_https, p1->channel), 200);
            wait_ans wa = {.p = p1, .ref = ref};
            assert_true(run_until(has_answer, &wa));
            if (!has_answer(&we)) {
                struct timeval tv = {0, 200000};
                event_base_loopexit(srv.base, &tv);
                event_base_dispatch(srv.base);
            }
        }
        assert_true(has_answer(&we));
    }

    /* PC2: discovery with AutoEnable, the local-UI policy, then a reset. */
    pcrec *p2 = &srv.os->pcs[2];
    snprintf(u, sizeof u, "%s/DownloadServers/%s", base2, smdp_name);
    add(p2, "d-node", u, NULL, NULL);
    snprintf(u, sizeof u, "%s/DownloadServers/%s/AutoEnable", base2, smdp_name);
    add(p2, "d-auto", u, "bool", "true");
    snprintf(u, sizeof u, "%s/Policies/LocalUIEnabled", base2);
    queue(p2,
          "<Replace><CmdID>ui</CmdID><Item><Target><LocURI>%s</LocURI></Target><Meta><Format "
          "xmlns=\"syncml:metinf\">bool</Format></Meta><Data>false</Data></Item></Replace>",
          u);
    snprintf(u, sizeof u, "%s/Identifier", base2);
    queue(p2,
          "<Replace><CmdID>ro</CmdID><Item><Target><LocURI>%s</LocURI></Target><Data>x</Data>"
          "</Item></Replace>",
          u);
    assert_int_equal(wns_push(h, wns_https, p2->channel), 200);
    wait_ans w2 = {.p = p2, .ref = "ro"};
    assert_true(run_until(has_answer, &w2));
    answer_of(p2, "ro", &code);
    assert_int_equal(code, 405);
    answer_of(p2, "ui", &code);
    assert_int_equal(code, 200);
    snprintf(u, sizeof u, "%s/DownloadServers/%s/DiscoveryState", base2, smdp_name);
    wait_ans wd = {.p = p2, .ref = ref, .want = "3"};
    for (int k = 0; k < 50 && !has_answer(&wd); k++) {
        snprintf(ref, sizeof ref, "disc-%d", k);
        get(p2, ref, u);
        assert_int_equal(wns_push(h, wns_https, p2->channel), 200);
        wait_ans wa = {.p = p2, .ref = ref};
        assert_true(run_until(has_answer, &wa));
        if (!has_answer(&wd)) {
            struct timeval tv = {0, 200000};
            event_base_loopexit(srv.base, &tv);
            event_base_dispatch(srv.base);
        }
    }
    assert_true(has_answer(&wd));
    sim_winpc *pc2 = sim_devsim_find_windows(ds, p2->id);
    en = sim_euicc_enabled(sim_winpc_euicc_const(pc2));
    assert_non_null(en);
    assert_string_equal(en->iccid, iccid[2]);
    /* The user cannot delete it: LocalUIEnabled is false. */
    sim_action_outcome o;
    assert_int_equal(sim_devsim_user_action(ds, p2->id, SIM_ACTION_DELETE_ESIM, &o, &err), ESIM_OK);
    assert_false(o.allowed);
    assert_non_null(sim_euicc_enabled(sim_winpc_euicc_const(pc2)));
    /* Reset to factory state: Actions/Status S_FALSE then S_OK; the eSIM is gone. */
    snprintf(u, sizeof u, "%s/Actions/ResetToFactoryState", base2);
    queue(p2, "<Exec><CmdID>reset</CmdID><Item><Target><LocURI>%s</LocURI></Target></Item></Exec>",
          u);
    assert_int_equal(wns_push(h, wns_https, p2->channel), 200);
    wait_ans wr = {.p = p2, .ref = "reset"};
    assert_true(run_until(has_answer, &wr));
    answer_of(p2, "reset", &code);
    assert_int_equal(code, 200);
    snprintf(u, sizeof u, "%s/Actions/Status", base2);
    wait_ans wok = {.p = p2, .ref = ref, .want = "0"};
    for (int k = 0; k < 50 && !has_answer(&wok); k++) {
        snprintf(ref, sizeof ref, "astat-%d", k);
        get(p2, ref, u);
        assert_int_equal(wns_push(h, wns_https, p2->channel), 200);
        wait_ans wa = {.p = p2, .ref = ref};
        assert_true(run_until(has_answer, &wa));
        if (!has_answer(&wok)) {
            struct timeval tv = {0, 200000};
            event_base_loopexit(srv.base, &tv);
            event_base_dispatch(srv.base);
        }
    }
    assert_true(has_answer(&wok));
    assert_int_equal(sim_euicc_profile_count(sim_winpc_euicc_const(pc2)), 0);

    /* WNS expiry and re-registration: the old channel answers 410, the PC
     * gets a new one and reports it in its next session; a push to it works. */
    char old[600];
    snprintf(old, sizeof old, "%s", p0->channel);
    assert_int_equal(wns_mock_expire_channel(wns, old, &err), ESIM_OK);
    assert_int_equal(wns_push(h, wns_https, old), 410);
    /* The PC hears of the expiry, asks for a new channel and starts a
     * session to report it, by itself (no sync; its next poll is a minute
     * away): the server learns the new channel before it needs to push. */
    before = p0->sessions;
    for (int k = 0; k < 100 && strcmp(sim_winpc_channel_uri(pc0), old) == 0; k++) {
        struct timeval tv = {0, 50000};
        event_base_loopexit(srv.base, &tv);
        event_base_dispatch(srv.base);
    }
    assert_string_not_equal(sim_winpc_channel_uri(pc0), old);
    w0.sessions = before + 1;
    assert_true(run_until(sessions_at_least, &w0));
    assert_string_equal(p0->channel, sim_winpc_channel_uri(pc0));
    int pushed = p0->alert1200;
    before = p0->sessions;
    assert_int_equal(wns_push(h, wns_https, p0->channel), 200);
    w0.sessions = before + 1;
    assert_true(run_until(sessions_at_least, &w0));
    assert_int_equal(p0->alert1200, pushed + 1);

    /* Nothing broke the session rules, and the counters add up. */
    for (int i = 0; i < NPC; i++)
        assert_int_equal(srv.os->pcs[i].violations, 0);
    sim_devsim_stats st = sim_devsim_get_stats(ds);
    assert_int_equal(st.windows_pcs, NPC);
    assert_int_equal(st.win_session_errors, 0);
    assert_true(st.wns_pushes >= 8);
    assert_int_equal(st.wns_expired, 1);
    assert_true(st.win_downloads_ok >= 2);
    assert_int_equal(st.win_downloads_failed, 3);
    assert_int_equal(st.win_resets, 1);
    /* The SM-DP+ saw the install notifications. */
    assert_int_equal(sim_smdp_find_order(smdp, iccid[0])->state, SIM_ORDER_INSTALLED);
    /* TLS as a PC does it: each PC's first session is a full handshake with
     * its client certificate (the server requires one), later sessions
     * resume the PC's own session, so each certificate went once. */
    int resumed = 0;
    for (int i = 0; i < NPC; i++) {
        assert_true(srv.os->pcs[i].first_tls_full);
        resumed += srv.os->pcs[i].tls_resumed;
    }
    assert_true(srv.os->pcs[0].tls_resumed >= 3);
    assert_int_equal(st.tls_client_certs, NPC);
    assert_true(st.tls_resumed >= (size_t)resumed);

    sim_http_free(h);
    sim_devsim_free(ds);
    wns_mock_free(wns);
    sim_smdp_free(smdp);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows_end_to_end),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
