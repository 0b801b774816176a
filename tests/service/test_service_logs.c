/*
 * test_service_logs.c — the service's log, read back from its file: one
 * line per event in logfmt or JSON, the access log (with the API key's name
 * and the device's UDID), refused authentications and identity mismatches
 * with the peer address and rate-limited, APNs and webhook trouble logged
 * when it starts and when it stops (not per attempt), and no secret in any
 * line.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <event2/event.h>
#include <event2/http.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "apns/apns_mock.h"
#include "service/svc_harness.h"

#define READER_TOKEN "reader-token-aaaaaaaaaaaa"
#define WRONG_TOKEN "wrong-token-zzzzzzzzzzzz"

HARNESS_ENV_GROUP(env)

static const esim_api_key keys[] = {{"reader", READER_TOKEN, ESIM_ROLE_READ_ONLY}};

static int open_log(const char *name, char path[400])
{
    snprintf(path, 400, "%s/%s.log", env.dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    assert_true(fd > 0);
    return fd;
}

static char *read_log(const char *path)
{
    esim_buf b = {0};
    assert_int_equal(esim_read_file(path, 16 << 20, &b, NULL), ESIM_OK);
    esim_buf_append(&b, "", 1);
    return (char *)b.data; /* free() */
}

static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* The first line holding every one of the NULL-terminated needles. */
static bool has_line(const char *text, ...)
{
    const char *line = text;
    while (*line) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char *copy = strndup(line, len);
        bool all = true;
        va_list ap;
        va_start(ap, text);
        for (const char *n = va_arg(ap, const char *); n && all; n = va_arg(ap, const char *))
            all = strstr(copy, n) != NULL;
        va_end(ap);
        free(copy);
        if (all)
            return true;
        line += len + (end ? 1 : 0);
    }
    return false;
}

/* ---- a webhook receiver that fails its first requests ---------------------------- */

typedef struct {
    struct event_base *base;
    struct evhttp *http;
    int port, requests, fail_first;
    int stop_pipe[2];
    struct event *stop_ev;
    pthread_t thread;
} receiver;

static void on_hook(struct evhttp_request *req, void *arg)
{
    receiver *rc = arg;
    int n = rc->requests++;
    evhttp_send_reply(req, n < rc->fail_first ? 503 : 200, n < rc->fail_first ? "No" : "OK", NULL);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopexit(arg, NULL);
}

static void *receiver_main(void *arg)
{
    event_base_dispatch(((receiver *)arg)->base);
    return NULL;
}

static void receiver_start(receiver *rc)
{
    rc->base = event_base_new();
    rc->http = evhttp_new(rc->base);
    evhttp_set_gencb(rc->http, on_hook, rc);
    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(rc->http, "127.0.0.1", 0);
    assert_non_null(sock);
    struct sockaddr_in sin;
    socklen_t sl = sizeof sin;
    getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&sin, &sl);
    rc->port = ntohs(sin.sin_port);
    assert_int_equal(pipe(rc->stop_pipe), 0);
    rc->stop_ev = event_new(rc->base, rc->stop_pipe[0], EV_READ, on_stop, rc->base);
    event_add(rc->stop_ev, NULL);
    pthread_create(&rc->thread, NULL, receiver_main, rc);
}

static void receiver_stop(receiver *rc)
{
    assert_int_equal(write(rc->stop_pipe[1], "x", 1), 1);
    pthread_join(rc->thread, NULL);
    close(rc->stop_pipe[0]);
    close(rc->stop_pipe[1]);
    event_free(rc->stop_ev);
    evhttp_free(rc->http);
    event_base_free(rc->base);
}

static void test_logfmt_access_refusals_webhooks(void **state)
{
    (void)state;
    receiver rc = {.fail_first = 2};
    receiver_start(&rc);
    char hook_url[160];
    snprintf(hook_url, sizeof hook_url, "http://user:hook-password@127.0.0.1:%d/hook?sig=s3cr3t",
             rc.port);
    const char *urls[] = {hook_url};
    char log_path[400];
    int fd = open_log("logfmt", log_path);
    test_service ts = {0};
    esim_service_config cfg;
    harness_config(&env, "logfmt", &cfg, ts.data_dir);
    cfg.api_keys = keys;
    cfg.n_api_keys = 1;
    cfg.log_level = ESIM_LOG_INFO;
    cfg.log_fd = fd;
    cfg.access_log = true;
    cfg.webhook_urls = urls;
    cfg.n_webhook_urls = 1;
    cfg.webhook_retry_base_ms = 50;
    cfg.webhook_secret = "hook-hmac-secret";
    harness_start(&ts, &cfg);

    test_device d, other;
    device_new(&d, &env, "LOG-DEVICE-1", ts.url);
    device_new(&other, &env, "LOG-DEVICE-2", ts.url);
    device_enroll(&d); /* two webhooks fail, then they get through */
    assert_int_equal(api_call(ts.url, READER_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL), 200);
    /* Another enrolled device's identity on this UDID: a mismatch. */
    device_enroll(&other);
    esim_buf idle = {0};
    assert_int_equal(esim_msg_build_result("LOG-DEVICE-1", ESIM_STATUS_IDLE, NULL, NULL, 0, NULL,
                                           ESIM_PLIST_XML, &idle, NULL),
                     ESIM_OK);
    assert_int_equal(device_put_signed_by(&d, &other.identity, idle.data, idle.len, NULL), 403);
    esim_buf_free(&idle);
    /* Wrong keys: warnings with the peer, at most 10 of them. */
    for (int i = 0; i < 14; i++)
        api_call(ts.url, WRONG_TOKEN, "GET", "/v1/devices", NULL, NULL, NULL);
    for (int i = 0;
         i < 100 && api_metric(ts.url, "esim_mdm_webhooks_total{outcome=\"delivered\"}") < 4; i++)
        usleep(50 * 1000);
    device_free(&d);
    device_free(&other);
    harness_stop(&ts);
    receiver_stop(&rc);
    close(fd);

    char *text = read_log(log_path);
    assert_true(has_line(text, "level=info event=started ", "url=http://127.0.0.1:", NULL));
    assert_true(has_line(text, "level=info event=access method=GET path=/v1/devices status=200",
                         "peer=127.0.0.1", "key=reader", NULL));
    assert_true(
        has_line(text, "event=access method=PUT path=/mdm status=200", "udid=LOG-DEVICE-1", NULL));
    assert_true(has_line(text, "level=warn event=identity_mismatch", "peer=127.0.0.1",
                         "udid=LOG-DEVICE-1", "status=403", NULL));
    assert_true(has_line(text, "level=warn event=api_auth_refused", "peer=127.0.0.1",
                         "reason=\"unknown API key\"", NULL));
    assert_true(has_line(text, "level=warn event=api_auth_throttled", "peer=127.0.0.1", NULL));
    assert_true(count(text, "event=api_auth_") <= 10);
    /* The receiver's trouble: once when it starts, once when it stops. */
    assert_int_equal(count(text, "event=webhook_failing"), 1);
    assert_true(has_line(text, "level=warn event=webhook_failing", "status=503",
                         "url=http://user:***@127.0.0.1:", "/hook?***", NULL));
    assert_true(has_line(text, "level=info event=webhook_recovered", "failures=2", NULL));
    /* No secret: keys, the webhook's credentials and secret, push magic. */
    assert_null(strstr(text, READER_TOKEN));
    assert_null(strstr(text, WRONG_TOKEN));
    assert_null(strstr(text, TEST_TOKEN));
    assert_null(strstr(text, "hook-password"));
    assert_null(strstr(text, "s3cr3t"));
    assert_null(strstr(text, "hook-hmac-secret"));
    assert_null(strstr(text, "magic-1234"));
    /* One event a line, each starting with its time. */
    for (const char *l = text; *l; l = strchr(l, '\n') + 1)
        assert_int_equal(strncmp(l, "ts=", 3), 0);
    free(text);
}

static void free_mock(void *arg)
{
    apns_mock_free(arg);
}

static void test_json_lines_and_apns_trouble_once(void **state)
{
    (void)state;
    test_service ts = {0};
    ts.base = event_base_new();
    char cert[400], key[400], ca[400];
    snprintf(cert, sizeof cert, "%s/server.pem", env.pki);
    snprintf(key, sizeof key, "%s/server.key", env.pki);
    snprintf(ca, sizeof ca, "%s/ca.pem", env.pki);
    apns_mock_config mc;
    apns_mock_config_init(&mc);
    mc.listen = "127.0.0.1:0";
    mc.tls_cert = cert;
    mc.tls_key = key;
    mc.client_ca = ca;
    esim_error e;
    assert_int_equal(apns_mock_parse_fail_rates(&mc, "400=1", &e), ESIM_OK);
    apns_mock *mock = NULL;
    if (apns_mock_new(ts.base, &mc, &mock, &e) != ESIM_OK)
        fail_msg("mock: %s", e.msg);
    ts.before_base_free = free_mock;
    ts.before_arg = mock;
    char apns_url[64], push_cert[400], push_key[400], topic_path[400];
    snprintf(apns_url, sizeof apns_url, "https://127.0.0.1:%d",
             apns_mock_port(mock, APNS_MOCK_PORT_TLS));
    snprintf(push_cert, sizeof push_cert, "%s/push.pem", env.pki);
    snprintf(push_key, sizeof push_key, "%s/push.key", env.pki);
    snprintf(topic_path, sizeof topic_path, "%s/push.topic", env.pki);
    char log_path[400];
    int fd = open_log("json", log_path);
    esim_service_config cfg;
    harness_config(&env, "json", &cfg, ts.data_dir);
    cfg.apns_url = apns_url;
    cfg.apns_cert_path = push_cert;
    cfg.apns_key_path = push_key;
    cfg.apns_ca_path = ca;
    cfg.log_level = ESIM_LOG_WARN; /* no access log below warn */
    cfg.log_json = true;
    cfg.log_fd = fd;
    cfg.access_log = true;
    harness_start(&ts, &cfg);
    esim_buf topic = {0};
    assert_int_equal(esim_read_file(topic_path, 1024, &topic, NULL), ESIM_OK);
    while (topic.len && (topic.data[topic.len - 1] == '\n'))
        topic.data[--topic.len] = '\0';
    test_device d;
    device_new(&d, &env, "JSON-DEVICE-1", ts.url);
    snprintf(d.topic, sizeof d.topic, "%s", (const char *)topic.data);
    esim_buf_free(&topic);
    device_enroll(&d);
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            api_call(ts.url, TEST_TOKEN, "POST", "/v1/push/JSON-DEVICE-1", "", NULL, NULL), 200);
    for (int i = 0;
         i < 100 && api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"rejected\"}") < 3;
         i++)
        usleep(50 * 1000);
    assert_int_equal(api_metric(ts.url, "esim_mdm_apns_outcomes_total{outcome=\"rejected\"}"), 3);
    device_free(&d);
    harness_stop(&ts);
    close(fd);

    char *text = read_log(log_path);
    int lines = 0, failing = 0;
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_t *o = json_loads(l, 0, NULL);
        assert_non_null(o);
        assert_true(json_is_string(json_object_get(o, "ts")));
        const char *level = json_string_value(json_object_get(o, "level"));
        assert_true(strcmp(level, "warn") == 0 || strcmp(level, "error") == 0);
        const char *event = json_string_value(json_object_get(o, "event"));
        assert_string_not_equal(event, "access");
        if (strcmp(event, "apns_failing") == 0) {
            failing++;
            assert_string_equal(json_string_value(json_object_get(o, "outcome")), "rejected");
            assert_string_equal(json_string_value(json_object_get(o, "status")), "400");
        }
        json_decref(o);
        lines++;
    }
    assert_int_equal(failing, 1); /* three failed pushes, one line */
    assert_true(lines >= 1);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logfmt_access_refusals_webhooks),
        cmocka_unit_test(test_json_lines_and_apns_trouble_once),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
