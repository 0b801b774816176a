/*
 * test_wns_mock.c — the WNS mock over real HTTPS on loopback: the token
 * endpoint and its refusals, raw notifications checked as WNS checks them
 * (401, 400, 413, 404, 410, injected 406/5xx), delivery to the simulator's
 * channel in order with the payload, forced channel and token expiry, the
 * counters, and `esim-mdm wns-mock` as a process.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <pthread.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "tests/sim/sim_test.h"
#include "tls_probe.h"
#include "wns/wns_mock.h"

typedef struct {
    char *dir;
    sim_pki *pki;
    struct event_base *base;
    sim_http *http;
    char cert[600], key[600];
} fixture;

static fixture fx;

static int setup_all(void **state)
{
    (void)state;
    fx.dir = st_tempdir();
    char pkidir[512];
    snprintf(pkidir, sizeof pkidir, "%s/pki", fx.dir);
    if (sim_pki_open(pkidir, &fx.pki, NULL) != ESIM_OK)
        return -1;
    snprintf(fx.cert, sizeof fx.cert, "%s/server.pem", pkidir);
    snprintf(fx.key, sizeof fx.key, "%s/server.key", pkidir);
    fx.base = event_base_new();
    return sim_http_new(fx.base, &fx.http, NULL) == ESIM_OK ? 0 : -1;
}

static int teardown_all(void **state)
{
    (void)state;
    sim_http_free(fx.http);
    event_base_free(fx.base);
    sim_pki_free(fx.pki);
    st_rmrf(fx.dir);
    free(fx.dir);
    return 0;
}

/* One request; the answer's status (-1 when none) and body (the caller frees). */
static long request(const char *method, const char *url, const char *const *hdrs, size_t nh,
                    const void *body, size_t len, char **out)
{
    st_reply w = {0};
    sim_http_request req = {.method = method,
                            .url = url,
                            .headers = hdrs,
                            .n_headers = nh,
                            .body = body,
                            .body_len = len,
                            .ca_file = sim_pki_ca_file(fx.pki)};
    if (sim_http_send(fx.http, &req, st_reply_cb, &w, NULL) != ESIM_OK)
        return -1;
    st_run_until(fx.base, &w.done);
    if (out) {
        *out = calloc(1, w.body.len + 1);
        memcpy(*out, w.body.data ? (const char *)w.body.data : "", w.body.len);
    }
    esim_buf_free(&w.body);
    return w.err == ESIM_OK ? w.status : -1;
}

static json_t *json_request(const char *method, const char *url, const char *body, long *status)
{
    static const char *const h[] = {"Content-Type: application/json"};
    char *out = NULL;
    *status = request(method, url, h, 1, body, body ? strlen(body) : 0, &out);
    json_t *j = out ? json_loads(out, 0, NULL) : NULL;
    free(out);
    return j;
}

static wns_mock *start(wns_mock_config *cfg, char *https, char *deliv)
{
    cfg->listen = "127.0.0.1:0";
    cfg->delivery_listen = "127.0.0.1:0";
    cfg->tls_cert = fx.cert;
    cfg->tls_key = fx.key;
    wns_mock *m = NULL;
    esim_error err;
    assert_int_equal(wns_mock_new(fx.base, cfg, &m, &err), ESIM_OK);
    snprintf(https, 64, "https://127.0.0.1:%d", wns_mock_port(m, WNS_MOCK_PORT_HTTPS));
    snprintf(deliv, 64, "http://127.0.0.1:%d", wns_mock_port(m, WNS_MOCK_PORT_DELIVERY));
    return m;
}

static char *get_token(const char *https, const char *form, long *status)
{
    static const char *const h[] = {"Content-Type: application/x-www-form-urlencoded"};
    char url[128], *out = NULL;
    snprintf(url, sizeof url, "%s/accesstoken.srf", https);
    *status = request("POST", url, h, 1, form, strlen(form), &out);
    json_t *j = out ? json_loads(out, 0, NULL) : NULL;
    free(out);
    const char *t = json_string_value(json_object_get(j, "access_token"));
    char *tok = t ? strdup(t) : NULL;
    if (tok) {
        assert_string_equal(json_string_value(json_object_get(j, "token_type")), "bearer");
        assert_true(json_integer_value(json_object_get(j, "expires_in")) > 0);
    } else if (j) {
        tok = strdup(json_string_value(json_object_get(j, "error")));
    }
    json_decref(j);
    return tok;
}

static long notify(const char *uri, const char *token, const char *type, const char *ctype,
                   const void *body, size_t len)
{
    char auth[256], t[64], c[96];
    const char *h[3];
    size_t n = 0;
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        h[n++] = auth;
    }
    if (type) {
        snprintf(t, sizeof t, "X-WNS-Type: %s", type);
        h[n++] = t;
    }
    snprintf(c, sizeof c, "Content-Type: %s", ctype);
    h[n++] = c;
    return request("POST", uri, h, n, body, len, NULL);
}

static const char *const GOOD_FORM = "grant_type=client_credentials&client_id=ms-app%3A%2F%2FS-1-"
                                     "15-2-1&client_secret=s3cret&scope=notify.windows.com";

static void test_tokens(void **state)
{
    (void)state;
    wns_mock_config cfg;
    wns_mock_config_init(&cfg);
    cfg.client_id = "ms-app://S-1-15-2-1";
    cfg.client_secret = "s3cret";
    char https[64], deliv[64];
    wns_mock *m = start(&cfg, https, deliv);
    long st;
    char *t = get_token(https, "grant_type=password&client_id=a&client_secret=b&scope=x", &st);
    assert_int_equal(st, 400);
    assert_string_equal(t, "invalid_request");
    free(t);
    t = get_token(https,
                  "grant_type=client_credentials&client_id=ms-app%3A%2F%2FS-1-15-2-1&client_"
                  "secret=wrong&scope=notify.windows.com",
                  &st);
    assert_int_equal(st, 400);
    assert_string_equal(t, "invalid_client");
    free(t);
    t = get_token(https,
                  "grant_type=client_credentials&client_id=ms-app%3A%2F%2FS-1-15-2-1&client_"
                  "secret=s3cret&scope=other",
                  &st);
    assert_int_equal(st, 400);
    assert_string_equal(t, "invalid_scope");
    free(t);
    t = get_token(https, GOOD_FORM, &st);
    assert_int_equal(st, 200);
    assert_true(strlen(t) > 20);
    free(t);
    wns_mock_stats s;
    wns_mock_stats_get(m, &s);
    assert_int_equal(s.token_requests, 4);
    assert_int_equal(s.tokens_issued, 1);
    assert_int_equal(s.token_refused, 3);
    /* The client kept its connection (open still), and the mock's end of
     * it answers without Nagle's algorithm: over TLS an answer is several
     * writes, each after the first held about 40 ms for the client's
     * delayed ACK with it (issue 17). */
    size_t nagle = 0;
    assert_true(st_accepted_on((uint16_t)wns_mock_port(m, WNS_MOCK_PORT_HTTPS), &nagle) >= 1);
    assert_int_equal(nagle, 0);
    wns_mock_free(m);
}

/* |p| run on a thread of its own while the mock's loop runs here, 20 ms at
 * a time (nothing on the loop tells it when the thread is done). */
static void probe(tls_probe *p)
{
    pthread_t t;
    p->done = false;
    assert_int_equal(pthread_create(&t, NULL, tls_probe_thread, p), 0);
    for (int i = 0; i < 1500 && !p->done; i++) {
        struct timeval tv = {0, 20000};
        event_base_loopexit(fx.base, &tv);
        event_base_dispatch(fx.base);
    }
    assert_int_equal(pthread_join(t, NULL), 0);
}

/* A full handshake sends the mock's certificate alone and one session
 * ticket (the service's client keeps only the newest; OpenSSL's default
 * is two); a resumed one gets one ticket too. */
static void test_tls_chain_and_tickets(void **state)
{
    (void)state;
    wns_mock_config cfg;
    wns_mock_config_init(&cfg);
    char https[64], deliv[64];
    wns_mock *m = start(&cfg, https, deliv);
    tls_probe p = {.port = wns_mock_port(m, WNS_MOCK_PORT_HTTPS), .ca = sim_pki_ca_file(fx.pki)};
    probe(&p);
    assert_true(p.ok);
    assert_false(p.resumed);
    assert_int_equal(p.certs, 1);
    assert_int_equal(p.tickets, 1);
    assert_non_null(p.sess);
    probe(&p);
    assert_true(p.ok);
    assert_true(p.resumed);
    assert_int_equal(p.tickets, 1);
    SSL_SESSION_free(p.sess);
    wns_mock_free(m);
}

static void test_notifications_and_delivery(void **state)
{
    (void)state;
    wns_mock_config cfg;
    wns_mock_config_init(&cfg);
    char https[64], deliv[64], url[256];
    wns_mock *m = start(&cfg, https, deliv);
    long st;
    char *tok = get_token(https, GOOD_FORM, &st);
    assert_int_equal(st, 200);
    /* The simulator asks for channels for two PCs; asking again gives the same. */
    snprintf(url, sizeof url, "%s/channels?channel=sim", deliv);
    json_t *j = json_request("POST", url, "{\"tags\":[\"PC-1\",\"PC-2\"]}", &st);
    assert_int_equal(st, 200);
    json_t *chs = json_object_get(j, "channels");
    assert_int_equal(json_array_size(chs), 2);
    char uri1[512], uri2[512];
    snprintf(uri1, sizeof uri1, "%s",
             json_string_value(json_object_get(json_array_get(chs, 0), "channel_uri")));
    snprintf(uri2, sizeof uri2, "%s",
             json_string_value(json_object_get(json_array_get(chs, 1), "channel_uri")));
    assert_non_null(strstr(uri1, "/?token="));
    assert_true(strncmp(uri1, https, strlen(https)) == 0);
    json_decref(j);
    j = json_request("POST", url, "{\"tags\":[\"PC-1\"]}", &st);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(j, "channels"), 0), "channel_uri")),
                        uri1);
    json_decref(j);
    j = json_request("POST", url, "{\"tags\":[\"bad tag\"]}", &st);
    assert_int_equal(st, 400);
    json_decref(j);
    /* WNS's checks, in order. */
    const char *oct = "application/octet-stream";
    assert_int_equal(notify(uri1, NULL, "wns/raw", oct, "x", 1), 401);
    assert_int_equal(notify(uri1, "not-a-token", "wns/raw", oct, "x", 1), 401);
    assert_int_equal(notify(uri1, tok, NULL, oct, "x", 1), 400);
    assert_int_equal(notify(uri1, tok, "wns/toast", "text/xml", "<toast/>", 8), 400);
    assert_int_equal(notify(uri1, tok, "wns/raw", "text/plain", "x", 1), 400);
    char big[6000];
    memset(big, 'a', sizeof big);
    assert_int_equal(notify(uri1, tok, "wns/raw", oct, big, sizeof big), 413);
    char unknown[600];
    snprintf(unknown, sizeof unknown, "%s/?token=0123456789abcdef", https);
    assert_int_equal(notify(unknown, tok, "wns/raw", oct, "x", 1), 404);
    /* Accepted: delivered in order with their payloads. */
    assert_int_equal(notify(uri2, tok, "wns/raw", oct, "wake", 4), 200);
    assert_int_equal(notify(uri1, tok, "wns/raw", oct, "", 0), 200);
    snprintf(url, sizeof url, "%s/deliveries?channel=sim&after=0&wait_ms=1000", deliv);
    j = json_request("GET", url, NULL, &st);
    assert_int_equal(st, 200);
    json_t *d = json_object_get(j, "deliveries");
    assert_int_equal(json_array_size(d), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(d, 0), "tag")), "PC-2");
    assert_string_equal(json_string_value(json_object_get(json_array_get(d, 0), "kind")), "push");
    assert_string_equal(json_string_value(json_object_get(json_array_get(d, 0), "payload")),
                        "d2FrZQ==");
    assert_string_equal(json_string_value(json_object_get(json_array_get(d, 1), "tag")), "PC-1");
    json_int_t next = json_integer_value(json_object_get(j, "next"));
    json_decref(j);
    /* Forced expiry: the PC's simulator hears of it; the service gets 410. */
    snprintf(url, sizeof url, "%s/expire", deliv);
    j = json_request("POST", url, "{\"tags\":[\"PC-1\"]}", &st);
    assert_int_equal(json_integer_value(json_object_get(j, "expired")), 1);
    json_decref(j);
    assert_int_equal(notify(uri1, tok, "wns/raw", oct, "x", 1), 410);
    snprintf(url, sizeof url, "%s/deliveries?channel=sim&after=%lld&wait_ms=1000", deliv,
             (long long)next);
    j = json_request("GET", url, NULL, &st);
    d = json_object_get(j, "deliveries");
    assert_int_equal(json_array_size(d), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(d, 0), "kind")),
                        "expired");
    assert_string_equal(json_string_value(json_object_get(json_array_get(d, 0), "channel_uri")),
                        uri1);
    json_decref(j);
    /* Re-registration: a new channel that works. */
    snprintf(url, sizeof url, "%s/channels?channel=sim", deliv);
    j = json_request("POST", url, "{\"tags\":[\"PC-1\"]}", &st);
    const char *fresh = json_string_value(
        json_object_get(json_array_get(json_object_get(j, "channels"), 0), "channel_uri"));
    assert_string_not_equal(fresh, uri1);
    assert_int_equal(notify(fresh, tok, "wns/raw", oct, "x", 1), 200);
    json_decref(j);
    /* Expired tokens: 401 until a new one. */
    snprintf(url, sizeof url, "%s/expire-tokens", deliv);
    j = json_request("POST", url, "{}", &st);
    assert_int_equal(json_integer_value(json_object_get(j, "expired")), 1);
    json_decref(j);
    assert_int_equal(notify(uri2, tok, "wns/raw", oct, "x", 1), 401);
    free(tok);
    tok = get_token(https, GOOD_FORM, &st);
    assert_int_equal(notify(uri2, tok, "wns/raw", oct, "x", 1), 200);
    free(tok);
    /* Counters, over the API and on /stats. */
    wns_mock_stats s;
    wns_mock_stats_get(m, &s);
    assert_int_equal(s.accepted, 4);
    assert_int_equal(s.gone, 1);
    assert_int_equal(s.not_found, 1);
    assert_int_equal(s.unauthorized, 3);
    assert_int_equal(s.bad_request, 3);
    assert_int_equal(s.delivered, 4);
    assert_int_equal(s.channels, 3);
    snprintf(url, sizeof url, "%s/stats", deliv);
    j = json_request("GET", url, NULL, &st);
    assert_int_equal(json_integer_value(json_object_get(j, "accepted")), 4);
    assert_int_equal(json_integer_value(json_object_get(j, "expired")), 1);
    json_decref(j);
    wns_mock_free(m);
}

static void test_faults(void **state)
{
    (void)state;
    wns_mock_config cfg;
    wns_mock_config_init(&cfg);
    esim_error err;
    assert_int_equal(wns_mock_parse_fail_rates(&cfg, "406=0.5,503=0.7", &err), ESIM_EINVAL);
    assert_int_equal(wns_mock_parse_fail_rates(&cfg, "200=0.5", &err), ESIM_EINVAL);
    assert_int_equal(wns_mock_parse_fail_rates(&cfg, "406=1", &err), ESIM_OK);
    cfg.seed = 7;
    cfg.delivery_cap = 1;
    char https[64], deliv[64], uri[512];
    wns_mock *m = start(&cfg, https, deliv);
    int64_t exp;
    assert_int_equal(wns_mock_channel(m, "PC-9", "f", uri, sizeof uri, &exp, &err), ESIM_OK);
    long st;
    char *tok = get_token(https, GOOD_FORM, &st);
    for (int i = 0; i < 5; i++)
        assert_int_equal(notify(uri, tok, "wns/raw", "application/octet-stream", "x", 1), 406);
    wns_mock_stats s;
    wns_mock_stats_get(m, &s);
    assert_int_equal(s.injected, 5);
    assert_int_equal(s.throttled, 5);
    assert_int_equal(s.delivered, 0);
    wns_mock_free(m);
    /* The delivery cap: the second undelivered notification is throttled. */
    wns_mock_config_init(&cfg);
    cfg.delivery_cap = 1;
    m = start(&cfg, https, deliv);
    assert_int_equal(wns_mock_channel(m, "PC-9", "f", uri, sizeof uri, &exp, &err), ESIM_OK);
    free(tok);
    tok = get_token(https, GOOD_FORM, &st);
    assert_int_equal(notify(uri, tok, "wns/raw", "application/octet-stream", "x", 1), 200);
    assert_int_equal(notify(uri, tok, "wns/raw", "application/octet-stream", "x", 1), 406);
    /* An expired channel by time: a TTL in the past is simulated by the API. */
    assert_int_equal(wns_mock_expire_channel(m, uri, &err), ESIM_OK);
    assert_int_equal(notify(uri, tok, "wns/raw", "application/octet-stream", "x", 1), 410);
    assert_int_equal(wns_mock_expire_channel(m, "https://x/?token=nope", &err), ESIM_ENOTFOUND);
    free(tok);
    wns_mock_free(m);
    /* Bad configurations. */
    wns_mock_config_init(&cfg);
    assert_int_equal(wns_mock_new(fx.base, &cfg, &m, &err), ESIM_EINVAL);
    cfg.listen = "127.0.0.1:0";
    assert_int_equal(wns_mock_new(fx.base, &cfg, &m, &err), ESIM_EINVAL);
    cfg.tls_cert = "/nonexistent.pem";
    cfg.tls_key = "/nonexistent.key";
    assert_int_not_equal(wns_mock_new(fx.base, &cfg, &m, &err), ESIM_OK);
    cfg.tls_cert = fx.cert;
    cfg.tls_key = fx.key;
    cfg.listen = "nonsense";
    assert_int_equal(wns_mock_new(fx.base, &cfg, &m, &err), ESIM_EINVAL);
}

static void test_cli(void **state)
{
    (void)state;
    const char *bin = getenv("ESIM_MDM_BIN");
    assert_non_null(bin);
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "%s wns-mock --help >/dev/null", bin);
    assert_int_equal(WEXITSTATUS(system(cmd)), 0);
    snprintf(cmd, sizeof cmd, "%s wns-mock --listen 127.0.0.1:0 2>/dev/null", bin);
    assert_int_equal(WEXITSTATUS(system(cmd)), 2);
    snprintf(cmd, sizeof cmd,
             "%s wns-mock --listen 127.0.0.1:0 --tls-cert %s --tls-key %s --fail-rate 700=1 "
             "2>/dev/null",
             bin, fx.cert, fx.key);
    assert_int_equal(WEXITSTATUS(system(cmd)), 2);
    /* A running mock: its first line names the ports; SIGTERM prints the counters. */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        execl(bin, bin, "wns-mock", "--listen", "127.0.0.1:0", "--tls-cert", fx.cert, "--tls-key",
              fx.key, "--delivery-listen", "127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *out = fdopen(fds[0], "r");
    char line[512] = "";
    assert_non_null(fgets(line, sizeof line, out));
    json_t *j = json_loads(line, 0, NULL);
    int port = (int)json_integer_value(json_object_get(json_object_get(j, "listening"), "https"));
    json_decref(j);
    assert_true(port > 0);
    char https[64];
    snprintf(https, sizeof https, "https://127.0.0.1:%d", port);
    long st;
    char *tok = get_token(https, GOOD_FORM, &st);
    assert_int_equal(st, 200);
    free(tok);
    kill(pid, SIGTERM);
    assert_non_null(fgets(line, sizeof line, out));
    assert_non_null(strstr(line, "\"tokens_issued\":1"));
    int ws = 0;
    waitpid(pid, &ws, 0);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    fclose(out);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_tls_chain_and_tickets),
        cmocka_unit_test(test_notifications_and_delivery),
        cmocka_unit_test(test_faults),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
