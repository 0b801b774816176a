/*
 * test_apns_mock.c — the APNs mock checked by clients that are not ours:
 * curl --http2 (one process per case) and Node's http2 module (all cases on
 * one session) must get the statuses and reasons APNs gives; plus the
 * delivery channel (register, long-poll, acknowledge, cap, dead tokens).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <jansson.h>

#include "apns_test.h"
#include "tls_probe.h"

typedef struct {
    test_pki pki;
    mock_thread mt;
    apns_mock_config cfg;
    char token[65];
    char dead[65];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    pki_make(&f->pki);
    apns_mock_config_init(&f->cfg);
    f->cfg.listen = "127.0.0.1:0";
    f->cfg.h2c_listen = "127.0.0.1:0";
    f->cfg.delivery_listen = "127.0.0.1:0";
    f->cfg.tls_cert = pki_path(&f->pki, "server.pem");
    f->cfg.tls_key = pki_path(&f->pki, "server.key");
    f->cfg.client_ca = pki_path(&f->pki, "ca.pem");
    make_token(f->token, 1);
    make_token(f->dead, 2);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f->mt.base)
        mock_stop(&f->mt, NULL);
    pki_remove(&f->pki);
    free(f);
    return 0;
}

static void start(fixture *f)
{
    mock_start(&f->mt, &f->cfg);
    assert_int_equal(apns_mock_add_dead_token(f->mt.mock, f->dead, NULL), ESIM_OK);
}

/* Runs |cmd| through the shell; stdout into |out|; returns the exit status. */
static int run_cmd(const char *cmd, esim_buf *out)
{
    esim_buf_reset(out);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0)
        esim_buf_append(out, buf, n);
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* One expected answer per case; the names match h2_client.js. */
typedef struct {
    const char *name;
    const char *curl_args; /* what differs from a valid push */
    int status;
    const char *reason;
} mock_case;

static const mock_case cases[] = {
    {"ok", "-H 'apns-id: 0f4f1a7e-8a77-4f5c-9d3e-2b1c0d9e8f7a'", 200, ""},
    {"no_topic", "-H 'apns-topic:'", 200, ""},
    {"wrong_topic", "-H 'apns-topic: com.example.other'", 400, "TopicDisallowed"},
    {"bad_token", "PATH=/3/device/1234", 400, "BadDeviceToken"},
    {"get", "-X GET", 405, "MethodNotAllowed"},
    {"bad_path", "PATH=/3/other/", 404, "BadPath"},
    {"alert_type", "-H 'apns-push-type: alert'", 400, "InvalidPushType"},
    {"no_push_type", "-H 'apns-push-type:'", 400, "InvalidPushType"},
    {"bad_priority", "-H 'apns-priority: 7'", 400, "BadPriority"},
    {"bad_expiration", "-H 'apns-expiration: soon'", 400, "BadExpirationDate"},
    {"bad_id", "-H 'apns-id: nope'", 400, "BadMessageId"},
    {"empty", "BODY=", 400, "PayloadEmpty"},
    {"too_large", "BODY=BIG", 413, "PayloadTooLarge"},
    {"duplicate", "-H 'apns-topic: TOPIC' -H 'apns-topic: TOPIC'", 400, "DuplicateHeaders"},
    {"dead", "PATH=DEAD", 410, "Unregistered"},
};

static void check_answer(const mock_case *c, json_t *j)
{
    const char *reason = json_string_value(json_object_get(j, "reason"));
    int status = (int)json_integer_value(json_object_get(j, "status"));
    if (status != c->status || strcmp(reason ? reason : "", c->reason) != 0)
        fail_msg("case %s: got %d %s, want %d %s", c->name, status, reason ? reason : "", c->status,
                 c->reason);
    const char *id = json_string_value(json_object_get(j, "apns_id"));
    assert_true(id && esim_uuid_valid(id)); /* every answer carries an apns-id */
    if (strcmp(c->name, "ok") == 0)
        assert_string_equal(id, "0f4f1a7e-8a77-4f5c-9d3e-2b1c0d9e8f7a");
    if (c->status == 410)
        assert_true(json_integer_value(json_object_get(j, "timestamp")) > 1600000000000LL);
}

/* Builds the curl command for one case. curl prints the status, the apns-id
 * and the body, which we turn into the same JSON shape node prints. */
static void curl_case(fixture *f, const mock_case *c, bool h2c, const char *bigfile)
{
    int port = apns_mock_port(f->mt.mock, h2c ? APNS_MOCK_PORT_H2C : APNS_MOCK_PORT_TLS);
    char path[256], body[300], extra[1024];
    snprintf(path, sizeof path, "/3/device/%s", f->token);
    snprintf(body, sizeof body, "-d '{\"mdm\":\"magic-curl\"}'");
    extra[0] = '\0';
    if (strncmp(c->curl_args, "PATH=", 5) == 0) {
        const char *p = c->curl_args + 5;
        if (strcmp(p, "DEAD") == 0)
            snprintf(path, sizeof path, "/3/device/%s", f->dead);
        else if (strcmp(p, "/3/other/") == 0)
            snprintf(path, sizeof path, "/3/other/%s", f->token);
        else
            snprintf(path, sizeof path, "%s", p);
    } else if (strncmp(c->curl_args, "BODY=", 5) == 0) {
        if (strcmp(c->curl_args + 5, "BIG") == 0)
            snprintf(body, sizeof body, "--data-binary @%s", bigfile);
        else
            snprintf(body, sizeof body, "--data-binary ''");
    } else if (strcmp(c->name, "duplicate") == 0) {
        snprintf(extra, sizeof extra, "-H 'apns-topic: %s' -H 'apns-topic: %s'", f->pki.topic,
                 f->pki.topic);
    } else {
        snprintf(extra, sizeof extra, "%s", c->curl_args);
    }
    if (strcmp(c->name, "get") == 0)
        body[0] = '\0';
    bool topic_changed = strstr(extra, "apns-topic") != NULL;
    bool type_changed = strstr(extra, "apns-push-type") != NULL;
    char topic[320] = "", type[64] = "", prio[64] = "";
    if (strstr(extra, "apns-priority") == NULL)
        snprintf(prio, sizeof prio, "-H 'apns-priority: 10'");
    if (!topic_changed)
        snprintf(topic, sizeof topic, "-H 'apns-topic: %s'", f->pki.topic);
    if (!type_changed)
        snprintf(type, sizeof type, "-H 'apns-push-type: mdm'");
    char tls[1200] = "--http2-prior-knowledge";
    if (!h2c)
        snprintf(tls, sizeof tls, "--http2 --cacert '%s' --cert '%s' --key '%s'",
                 pki_path(&f->pki, "ca.pem"), pki_path(&f->pki, "push.pem"),
                 pki_path(&f->pki, "push.key"));
    char bodyfile[400], hdrfile[400];
    snprintf(bodyfile, sizeof bodyfile, "%s/curl.body", f->pki.dir);
    snprintf(hdrfile, sizeof hdrfile, "%s/curl.headers", f->pki.dir);
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "curl -sS %s %s %s %s %s %s -o '%s' -D '%s' -w '%%{http_code}' '%s://%s:%d%s'", tls,
             topic, type, prio, extra, body, bodyfile, hdrfile, h2c ? "http" : "https",
             h2c ? "127.0.0.1" : "localhost", port, path);
    esim_buf out = {0}, text = {0}, hdrs = {0};
    int rc = run_cmd(cmd, &out);
    if (rc != 0)
        fail_msg("case %s: curl exited %d: %s", c->name, rc, cmd);
    int status = atoi((char *)out.data);
    assert_int_equal(esim_read_file(bodyfile, 1 << 20, &text, NULL), ESIM_OK);
    assert_int_equal(esim_read_file(hdrfile, 1 << 20, &hdrs, NULL), ESIM_OK);
    char id[64] = "";
    const char *h = strstr((char *)hdrs.data, "apns-id: ");
    if (h)
        sscanf(h + 9, "%63[0-9a-fA-F-]", id);
    json_t *resp = text.len ? json_loadb((char *)text.data, text.len, 0, NULL) : json_object();
    if (resp == NULL)
        fail_msg("case %s: body is not JSON: %s", c->name, (char *)text.data);
    json_object_set_new(resp, "status", json_integer(status));
    json_object_set_new(resp, "apns_id", json_string(id));
    check_answer(c, resp);
    json_decref(resp);
    esim_buf_free(&out);
    esim_buf_free(&text);
    esim_buf_free(&hdrs);
}

static bool have(const char *cmd)
{
    char buf[300];
    snprintf(buf, sizeof buf, "command -v %s >/dev/null 2>&1", cmd);
    return system(buf) == 0;
}

static void test_curl_tls(void **state)
{
    fixture *f = *state;
    if (!have("curl"))
        skip();
    start(f);
    char big[400];
    snprintf(big, sizeof big, "%s/big.json", f->pki.dir);
    FILE *fp = fopen(big, "w");
    fprintf(fp, "{\"mdm\":\"");
    for (int i = 0; i < 5000; i++)
        fputc('x', fp);
    fprintf(fp, "\"}");
    fclose(fp);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        curl_case(f, &cases[i], false, big);
}

static void test_curl_no_client_certificate(void **state)
{
    fixture *f = *state;
    if (!have("curl"))
        skip();
    start(f);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "curl -sS --http2 --cacert '%s' -d '{\"mdm\":\"x\"}' https://localhost:%d/3/device/%s "
             ">/dev/null 2>&1",
             pki_path(&f->pki, "ca.pem"), apns_mock_port(f->mt.mock, APNS_MOCK_PORT_TLS), f->token);
    esim_buf out = {0};
    assert_int_not_equal(run_cmd(cmd, &out), 0); /* refused in the handshake */
    /* A certificate from another CA is refused too. */
    snprintf(cmd, sizeof cmd,
             "curl -sS --http2 --cacert '%s' --cert '%s' --key '%s' -d '{\"mdm\":\"x\"}' "
             "https://localhost:%d/3/device/%s >/dev/null 2>&1",
             pki_path(&f->pki, "ca.pem"), pki_path(&f->pki, "device-ca.pem"),
             pki_path(&f->pki, "device-ca.key"), apns_mock_port(f->mt.mock, APNS_MOCK_PORT_TLS),
             f->token);
    assert_int_not_equal(run_cmd(cmd, &out), 0);
    esim_buf_free(&out);
    apns_mock_stats s;
    mock_stop(&f->mt, &s);
    f->mt.base = NULL;
    assert_int_equal(s.tls_refused, 2);
    assert_int_equal(s.requests, 0);
}

/* A full handshake sends the mock's certificate alone: its CA (also the
 * CA of the client certificates it takes, so in its verify store) is what
 * the client trusts already, not part of the chain. No session ticket: the
 * mock resumes none (it requires a client certificate and sets no session
 * ID context), so each was made and taken for nothing. */
static void test_tls_chain_and_no_tickets(void **state)
{
    fixture *f = *state;
    start(f);
    tls_probe p = {.port = apns_mock_port(f->mt.mock, APNS_MOCK_PORT_TLS),
                   .ca = pki_path(&f->pki, "ca.pem"),
                   .cert = pki_path(&f->pki, "push.pem"),
                   .key = pki_path(&f->pki, "push.key"),
                   .alpn = (const unsigned char *)"\x02h2",
                   .alpn_len = 3};
    tls_probe_run(&p);
    assert_true(p.ok);
    assert_false(p.resumed);
    assert_int_equal(p.certs, 1);
    assert_int_equal(p.tickets, 0);
    assert_null(p.sess);
}

static void test_curl_h2c(void **state)
{
    fixture *f = *state;
    if (!have("curl"))
        skip();
    start(f);
    /* No client certificate on h2c: the topic must be given. */
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const mock_case *c = &cases[i];
        if (strcmp(c->name, "ok") == 0 || strcmp(c->name, "bad_token") == 0 ||
            strcmp(c->name, "dead") == 0 || strcmp(c->name, "get") == 0)
            curl_case(f, c, true, NULL);
    }
    mock_case missing = {"no_topic", "-H 'apns-topic:'", 400, "MissingTopic"};
    curl_case(f, &missing, true, NULL);
}

static void test_node_http2(void **state)
{
    fixture *f = *state;
    if (!have("node"))
        skip();
    start(f);
    const char *src = getenv("ESIM_SOURCE_DIR");
    assert_non_null(src);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "node '%s/tests/apns/h2_client.js' https://localhost:%d '%s' '%s' '%s' '%s' %s %s",
             src, apns_mock_port(f->mt.mock, APNS_MOCK_PORT_TLS), pki_path(&f->pki, "ca.pem"),
             pki_path(&f->pki, "push.pem"), pki_path(&f->pki, "push.key"), f->pki.topic, f->token,
             f->dead);
    esim_buf out = {0};
    int rc = run_cmd(cmd, &out);
    if (rc != 0)
        fail_msg("node exited %d: %s", rc, out.data ? (char *)out.data : "");
    char *line = (char *)out.data;
    size_t n = 0;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        const char *name = json_string_value(json_object_get(j, "name"));
        assert_non_null(name);
        assert_true(n < sizeof cases / sizeof cases[0]);
        assert_string_equal(name, cases[n].name);
        check_answer(&cases[n], j);
        json_decref(j);
        n++;
        line = nl ? nl + 1 : NULL;
    }
    assert_int_equal(n, sizeof cases / sizeof cases[0]);
    esim_buf_free(&out);
}

/* Sends |data| on a fresh TCP connection and reads until the mock closes it
 * (or 60 s pass: then the mock hung on it, and the test fails; the bound is
 * only a hang guard, far beyond a busy machine's scheduling delays). */
static void raw_exchange(int port, const void *data, size_t len, bool expect_close)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {expect_close ? 60 : 0, expect_close ? 0 : 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(send(fd, data, len, MSG_NOSIGNAL), (ssize_t)len);
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0)
        ;
    /* closed (FIN, or RST when our bytes were left unread), never timed out */
    if (expect_close && n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        fail_msg("the mock left a bad connection open on port %d", port);
    close(fd);
}

static void test_garbage_input(void **state)
{
    fixture *f = *state;
    if (!have("curl"))
        skip();
    start(f);
    int h2c = apns_mock_port(f->mt.mock, APNS_MOCK_PORT_H2C);
    int tls = apns_mock_port(f->mt.mock, APNS_MOCK_PORT_TLS);
    static const char http1[] = "POST /3/device/00 HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_exchange(h2c, http1, sizeof http1 - 1, true);
    unsigned char junk[3000];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 131 + 7);
    raw_exchange(h2c, junk, sizeof junk, true);
    raw_exchange(tls, junk, sizeof junk, true);
    /* a valid preface then a frame with a bad length */
    static const char bad_frame[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                                    "\xff\xff\xff\x01\x00\x00\x00\x00\x01";
    raw_exchange(h2c, bad_frame, sizeof bad_frame - 1, true);
    /* a connection that stalls half-way does not hold up anybody else */
    static const char half[] = "PRI * HTTP/2.0\r\n";
    int stalled = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)h2c),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(stalled, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(send(stalled, half, sizeof half - 1, MSG_NOSIGNAL),
                     (ssize_t)(sizeof half - 1));
    curl_case(f, &cases[0], true, NULL);
    curl_case(f, &cases[0], false, NULL);
    close(stalled);
}

/* ---- delivery channel ---- */

typedef struct {
    fixture *f;
    int delay_ms;
} late_push;

static void *push_later(void *arg)
{
    late_push *lp = arg;
    usleep((useconds_t)lp->delay_ms * 1000);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "curl -sS --http2-prior-knowledge -H 'apns-topic: com.apple.mgmt.External.x' "
             "-H 'apns-push-type: mdm' -d '{\"mdm\":\"late\"}' -o /dev/null "
             "http://127.0.0.1:%d/3/device/%s",
             apns_mock_port(lp->f->mt.mock, APNS_MOCK_PORT_H2C), lp->f->token);
    assert_int_equal(system(cmd), 0);
    return NULL;
}

/* One MDM push over h2c with curl; returns the HTTP status. */
static int h2c_push_status(fixture *f, const char *token)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "curl -sS --http2-prior-knowledge -H 'apns-topic: com.apple.mgmt.External.x' "
             "-H 'apns-push-type: mdm' -d '{\"mdm\":\"m-%.8s\"}' -o /dev/null -w '%%{http_code}' "
             "http://127.0.0.1:%d/3/device/%s",
             token, apns_mock_port(f->mt.mock, APNS_MOCK_PORT_H2C), token);
    esim_buf out = {0};
    assert_int_equal(run_cmd(cmd, &out), 0);
    int status = atoi((char *)out.data);
    esim_buf_free(&out);
    return status;
}

/* Deliveries for one channel's tokens never show up on another. */
static void test_delivery_channels_isolated(void **state)
{
    fixture *f = *state;
    if (!have("curl"))
        skip();
    start(f);
    int dport = apns_mock_port(f->mt.mock, APNS_MOCK_PORT_DELIVERY);
    char a[65], b[65], body[300];
    make_token(a, 10);
    make_token(b, 11);
    esim_buf out = {0};
    snprintf(body, sizeof body, "{\"tokens\":[\"%s\"]}", a);
    assert_int_equal(http_call(dport, "/tokens?channel=A", body, &out), 200);
    snprintf(body, sizeof body, "{\"tokens\":[\"%s\"]}", b);
    assert_int_equal(http_call(dport, "/tokens?channel=B", body, &out), 200);
    assert_int_equal(h2c_push_status(f, a), 200);
    assert_int_equal(h2c_push_status(f, b), 200);
    assert_int_equal(h2c_push_status(f, a), 200);
    const char *names[] = {"A", "B"};
    const char *tokens[] = {a, b};
    size_t want[] = {2, 1};
    for (int c = 0; c < 2; c++) {
        char path[128];
        snprintf(path, sizeof path, "/deliveries?channel=%s&after=0", names[c]);
        assert_int_equal(http_call(dport, path, NULL, &out), 200);
        json_t *j = json_loads((char *)out.data, 0, NULL);
        json_t *pushes = json_object_get(j, "pushes");
        assert_int_equal(json_array_size(pushes), want[c]);
        long long last = 0;
        for (size_t i = 0; i < json_array_size(pushes); i++) {
            json_t *p = json_array_get(pushes, i);
            assert_string_equal(json_string_value(json_object_get(p, "token")), tokens[c]);
            long long seq = json_integer_value(json_object_get(p, "seq"));
            assert_true(seq > last); /* in order */
            last = seq;
        }
        json_decref(j);
    }
    /* the channel nobody registered with is empty, not an error */
    assert_int_equal(http_call(dport, "/deliveries?channel=C&wait_ms=10", NULL, &out), 200);
    assert_non_null(strstr((char *)out.data, "\"pushes\":[]"));
    esim_buf_free(&out);
}

static void test_delivery_channel(void **state)
{
    fixture *f = *state;
    if (!have("curl"))
        skip();
    f->cfg.delivery_cap = 3;
    start(f);
    int dport = apns_mock_port(f->mt.mock, APNS_MOCK_PORT_DELIVERY);
    esim_buf out = {0};
    char body[300];
    snprintf(body, sizeof body, "{\"tokens\":[\"%s\"]}", f->token);
    assert_int_equal(http_call(dport, "/tokens?channel=sim-1", body, &out), 200);
    assert_non_null(strstr((char *)out.data, "\"registered\":1"));
    /* bad input: clear 400s, never a crash */
    assert_int_equal(http_call(dport, "/tokens?channel=sim-1", "{\"tokens\":[\"xyz\"]}", &out),
                     400);
    assert_non_null(strstr((char *)out.data, "tokens[0]"));
    assert_int_equal(http_call(dport, "/tokens", "not json", &out), 400);
    assert_int_equal(http_call(dport, "/tokens?channel=bad%20name", body, &out), 400);
    assert_int_equal(http_call(dport, "/deliveries?after=x", NULL, &out), 400);
    assert_int_equal(http_call(dport, "/deliveries?wait_ms=999999", NULL, &out), 400);
    assert_int_equal(http_call(dport, "/nowhere", NULL, &out), 404);

    /* long-poll: the push arrives while we wait (the poll is answered as
     * soon as it does; the longest wait only covers a slow machine) */
    late_push lp = {f, 200};
    pthread_t th;
    pthread_create(&th, NULL, push_later, &lp);
    assert_int_equal(
        http_call(dport, "/deliveries?channel=sim-1&after=0&wait_ms=60000", NULL, &out), 200);
    pthread_join(th, NULL);
    json_t *j = json_loads((char *)out.data, 0, NULL);
    json_t *p = json_array_get(json_object_get(j, "pushes"), 0);
    assert_non_null(p);
    assert_string_equal(json_string_value(json_object_get(p, "push_magic")), "late");
    assert_string_equal(json_string_value(json_object_get(p, "token")), f->token);
    long long seq = json_integer_value(json_object_get(p, "seq"));
    assert_int_equal(json_integer_value(json_object_get(j, "next")), seq);
    json_decref(j);

    /* three more fill the cap (the first is not acknowledged yet) ... */
    for (int i = 0; i < 3; i++) {
        lp.delay_ms = 0;
        push_later(&lp);
    }
    char path[128];
    snprintf(path, sizeof path, "/deliveries?channel=sim-1&after=0");
    assert_int_equal(http_call(dport, path, NULL, &out), 200);
    j = json_loads((char *)out.data, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(j, "pushes")), 3);
    assert_non_null(json_string_value(json_object_get(j, "error"))); /* backlog full */
    json_decref(j);
    /* ... acknowledging frees them, and nothing comes twice */
    snprintf(path, sizeof path, "/deliveries?channel=sim-1&after=%lld", seq + 1000);
    assert_int_equal(http_call(dport, path, NULL, &out), 200);
    j = json_loads((char *)out.data, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(j, "pushes")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "backlog")), 0);
    json_decref(j);

    /* dead at run time: the next push gets 410 */
    assert_int_equal(http_call(dport, "/dead-tokens", body, &out), 200);
    assert_int_equal(h2c_push_status(f, f->token), 410);
    apns_mock_stats s;
    esim_buf_free(&out);
    mock_stop(&f->mt, &s);
    f->mt.base = NULL;
    assert_int_equal(s.accepted, 3);     /* the fourth push found the channel full */
    assert_int_equal(s.backlog_full, 1); /* and was answered 429 */
    assert_int_equal(s.delivered, 3);
}

static void test_bad_config(void **state)
{
    fixture *f = *state;
    apns_mock *m = NULL;
    esim_error err = {{0}};
    struct event_base *base = event_base_new();
    apns_mock_config c;
    apns_mock_config_init(&c);
    assert_int_equal(apns_mock_new(base, &c, &m, &err), ESIM_EINVAL);
    c.listen = "127.0.0.1:0";
    assert_int_equal(apns_mock_new(base, &c, &m, &err), ESIM_EINVAL); /* no cert */
    c = f->cfg;
    c.listen = "localhost:0";
    assert_int_equal(apns_mock_new(base, &c, &m, &err), ESIM_EINVAL);
    c.listen = "127.0.0.1:70000";
    assert_int_equal(apns_mock_new(base, &c, &m, &err), ESIM_EINVAL);
    c.listen = "127.0.0.1:0";
    c.client_ca = "/nonexistent.pem";
    assert_int_equal(apns_mock_new(base, &c, &m, &err), ESIM_ENOTFOUND);
    c.client_ca = f->cfg.client_ca;
    char dead[300];
    snprintf(dead, sizeof dead, "%s/dead.txt", f->pki.dir);
    FILE *fp = fopen(dead, "w");
    fprintf(fp, "# dead tokens\n%s\nnot-a-token\n", f->dead);
    fclose(fp);
    c.dead_tokens_path = dead;
    assert_int_equal(apns_mock_new(base, &c, &m, &err), ESIM_EINVAL);
    assert_non_null(strstr(err.msg, "line 3"));
    assert_int_equal(apns_mock_parse_fail_rates(&c, "503=0.1,429=0.05", &err), ESIM_OK);
    assert_int_equal(c.fail_rate_count, 2);
    assert_int_equal(apns_mock_parse_fail_rates(&c, "503=2", &err), ESIM_EINVAL);
    assert_int_equal(apns_mock_parse_fail_rates(&c, "200=0.1", &err), ESIM_EINVAL);
    assert_int_equal(apns_mock_parse_fail_rates(&c, "503=0.6,500=0.6", &err), ESIM_EINVAL);
    assert_int_equal(apns_mock_parse_fail_rates(&c, "503", &err), ESIM_EINVAL);
    assert_null(m);
    event_base_free(base);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_curl_tls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_chain_and_no_tickets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_curl_no_client_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_curl_h2c, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_http2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delivery_channel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_delivery_channels_isolated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_config, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
