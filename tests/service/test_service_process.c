/*
 * test_service_process.c — `esim-mdm serve` as a real process: started from
 * a config file on an ephemeral port (--port-file), driven by the admin
 * subcommands (enqueue, status, devices, cancel), and killed with SIGKILL at
 * random instants while a device works through its queue. After each
 * restart no command is lost and none that the device saw acknowledged is
 * ever delivered again.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "service/svc_harness.h"

static const char *bin;

static void find_bin(void)
{
    bin = getenv("ESIM_MDM_BIN");
    if (!bin)
        bin = "esim-mdm";
}

HARNESS_ENV_GROUP_HOOKS(env, find_bin, NULL)

typedef struct {
    pid_t pid;
    char url[64];
    char config[400];
    char port_file[400];
    char token_file[400];
    char log[400]; /* its standard error */
} server;

static void server_prepare(server *s, const char *name)
{
    char data[400], text[2048];
    snprintf(data, sizeof data, "%s/%s", env.dir, name);
    snprintf(s->config, sizeof s->config, "%s/%s.conf", env.dir, name);
    snprintf(s->port_file, sizeof s->port_file, "%s/%s.port", env.dir, name);
    snprintf(s->token_file, sizeof s->token_file, "%s/%s.token", env.dir, name);
    snprintf(s->log, sizeof s->log, "%s/%s.stderr", env.dir, name);
    harness_write_text(s->token_file, TEST_TOKEN "\n");
    chmod(s->token_file, 0600); /* a token others may read is refused */
    snprintf(text, sizeof text,
             "# esim-mdm serve configuration for the process test\n"
             "listen 127.0.0.1:0\n"
             "port-file %s\n"
             "data-dir %s\n"
             "api-token-file %s\n"
             "device-auth none\n"
             "device-rate 100000\n",
             s->port_file, data, s->token_file);
    harness_write_text(s->config, text);
}

static void server_start(server *s)
{
    s->pid = harness_serve(bin, s->config, s->port_file, s->log, s->url);
}

static int server_kill(server *s, int sig)
{
    kill(s->pid, sig);
    int status = 0;
    waitpid(s->pid, &status, 0);
    return status;
}

/* Runs an esim-mdm admin subcommand; its stdout goes to |out|. */
static int __attribute__((format(printf, 3, 4)))
run_cli(server *s, esim_buf *out, const char *fmt, ...)
{
    char args[1024], cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "'%s' %s --server %s --token-file '%s'", bin, args, s->url,
             s->token_file);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0)
        esim_buf_append(out, buf, n);
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_cli_clients_and_config_file(void **state)
{
    (void)state;
    server s;
    server_prepare(&s, "cli");
    server_start(&s);
    test_device dev;
    device_new(&dev, &env, "00008130-000000000000000A", s.url);
    dev.sign = SIGN_NONE;
    device_enroll(&dev);

    esim_buf out = {0};
    assert_int_equal(
        run_cli(&s, &out, "enqueue --udid %s --refresh-plans smdp.example.com --json", dev.udid),
        0);
    json_t *r = json_loads((const char *)out.data, 0, NULL);
    assert_non_null(r);
    char uuid[128];
    snprintf(uuid, sizeof uuid, "%s", json_string_value(json_object_get(r, "command_uuid")));
    json_decref(r);
    esim_buf_reset(&out);
    /* A people-readable table without --json. */
    assert_int_equal(
        run_cli(&s, &out, "enqueue --udid %s --device-information ServiceSubscriptions", dev.udid),
        0);
    assert_non_null(strstr((const char *)out.data, "DeviceInformation"));
    assert_non_null(strstr((const char *)out.data, dev.udid));
    const char *line = strstr((const char *)out.data, "command ");
    char second[64] = "";
    assert_non_null(line);
    sscanf(line, "command %63s", second);
    esim_buf_reset(&out);

    esim_cmd_parsed next;
    assert_int_equal(device_result(&dev, ESIM_STATUS_IDLE, NULL, &next), 200);
    assert_string_equal(next.command_uuid, uuid);
    esim_cmd_parsed_free(&next);
    assert_int_equal(device_result(&dev, ESIM_STATUS_ACKNOWLEDGED, uuid, NULL), 200);

    assert_int_equal(run_cli(&s, &out, "status %s", uuid), 0);
    assert_non_null(strstr((const char *)out.data, "acknowledged"));
    esim_buf_reset(&out);
    assert_int_equal(run_cli(&s, &out, "devices"), 0);
    assert_non_null(strstr((const char *)out.data, dev.udid));
    esim_buf_reset(&out);
    /* One device: its line, then its queue (the DeviceInformation still waits). */
    assert_int_equal(run_cli(&s, &out, "devices %s", dev.udid), 0);
    assert_non_null(strstr((const char *)out.data, "queue: 1 command(s) waiting"));
    assert_non_null(strstr((const char *)out.data, second));
    esim_buf_reset(&out);
    assert_int_equal(run_cli(&s, &out, "cancel %s %s", dev.udid, second), 0);
    assert_non_null(strstr((const char *)out.data, "canceled"));
    esim_buf_reset(&out);
    /* Bad input is a usage error (2) with nothing printed to stdout. */
    assert_int_equal(run_cli(&s, &out, "enqueue --udid %s --refresh-plans ftp://x", dev.udid), 2);
    assert_int_equal(run_cli(&s, &out, "status not-a-uuid"), 2);

    /* The inventory as CSV, then the device retired; the audit log has it. */
    assert_int_equal(run_cli(&s, &out, "devices --csv"), 0);
    assert_int_equal(strncmp((const char *)out.data, "udid,platform,enrolled,", 23), 0);
    assert_non_null(strstr((const char *)out.data, dev.udid));
    esim_buf_reset(&out);
    assert_int_equal(run_cli(&s, &out, "retire %s", dev.udid), 0);
    assert_non_null(strstr((const char *)out.data, "retired"));
    esim_buf_reset(&out);
    /* The service refuses: 1, not a usage error. */
    assert_int_equal(run_cli(&s, &out, "retire 00008130-00000000000000FF"), 1);
    assert_int_equal(run_cli(&s, &out, "retire"), 2);
    assert_int_equal(run_cli(&s, &out, "audit --json"), 0);
    json_t *audit = json_loads((const char *)out.data, 0, NULL);
    assert_non_null(audit);
    size_t n_audit = json_array_size(json_object_get(audit, "entries"));
    assert_true(n_audit >= 4);
    json_t *last = json_array_get(json_object_get(audit, "entries"), n_audit - 1);
    assert_string_equal(json_string_value(json_object_get(last, "method")), "DELETE");
    assert_int_equal(json_integer_value(json_object_get(last, "status")), 404);
    assert_string_equal(json_string_value(json_object_get(last, "who")), "api-token");
    json_decref(audit);
    esim_buf_reset(&out);
    /* --json: standard output is one JSON document and nothing else (the
     * whole of it parses), or nothing at all when the service refuses. */
    char json_cmds[6][200];
    snprintf(json_cmds[0], sizeof json_cmds[0], "devices --json");
    snprintf(json_cmds[1], sizeof json_cmds[1], "devices %s --json", dev.udid);
    snprintf(json_cmds[2], sizeof json_cmds[2], "status %s --json", uuid);
    snprintf(json_cmds[3], sizeof json_cmds[3], "campaign list --json");
    snprintf(json_cmds[4], sizeof json_cmds[4], "diagnose %s --json", dev.udid);
    snprintf(json_cmds[5], sizeof json_cmds[5], "audit --limit 2 --json");
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(run_cli(&s, &out, "%s", json_cmds[i]), 0);
        esim_buf_append(&out, "", 1);
        json_error_t je;
        json_t *j = json_loads((const char *)out.data, 0, &je);
        if (!j)
            fail_msg("esim-mdm %s: not one JSON document (%s): %s", json_cmds[i], je.text,
                     (const char *)out.data);
        json_decref(j);
        esim_buf_reset(&out);
    }
    assert_int_equal(run_cli(&s, &out, "retire 00008130-00000000000000FF --json"), 1);
    assert_int_equal(out.len, 0);
    assert_int_equal(run_cli(&s, &out, "status 9C1E6C6A-2F41-4C7B-8E0B-3D0F2A9B7C11 --json"), 1);
    assert_int_equal(out.len, 0);
    /* Every admin command's help has an example. */
    static const char *const admin[] = {"enqueue", "status",   "devices",  "cancel", "retire",
                                        "audit",   "campaign", "diagnose", "import"};
    for (size_t i = 0; i < sizeof admin / sizeof admin[0]; i++) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "'%s' %s --help", bin, admin[i]);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char buf[8192];
        size_t got = fread(buf, 1, sizeof buf - 1, p);
        buf[got] = '\0';
        assert_int_equal(pclose(p), 0);
        if (!strstr(buf, "example"))
            fail_msg("esim-mdm %s --help has no example", admin[i]);
        if (!strstr(buf, "--cacert"))
            fail_msg("esim-mdm %s --help does not mention --cacert", admin[i]);
    }
    esim_buf_free(&out);

    /* SIGTERM: a clean stop. */
    int status = server_kill(&s, SIGTERM);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    device_free(&dev);
}

/* ---- the access log ---- */

#define BURST 300

/* Answers in |buf| so far (each starts with the status line). */
static int answers_in(const char *buf)
{
    int n = 0;
    for (const char *p = buf; (p = strstr(p, "HTTP/1.1 ")) != NULL; p += 9)
        n++;
    return n;
}

/* Reads answers from |fd| into |buf| until |want| of them came, the
 * connection closed, or 10 s of silence; returns how many came. */
static int read_answers(int fd, esim_buf *buf, int want)
{
    while (answers_in(buf->len ? (const char *)buf->data : "") < want) {
        struct pollfd p = {fd, POLLIN, 0};
        char chunk[16384];
        if (poll(&p, 1, 10000) <= 0)
            break;
        ssize_t r = recv(fd, chunk, sizeof chunk, 0);
        if (r <= 0)
            break;
        esim_buf_append(buf, chunk, (size_t)r);
        esim_buf_append(buf, "", 1); /* a terminator, dropped by the next append */
        buf->len--;
    }
    return answers_in(buf->len ? (const char *)buf->data : "");
}

static void send_burst(int fd, int from, int n)
{
    esim_buf b = {0};
    for (int i = from; i < from + n; i++)
        esim_buf_printf(&b, "GET /burst/%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
    size_t off = 0;
    while (off < b.len) {
        ssize_t w = send(fd, b.data + off, b.len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    esim_buf_free(&b);
}

/* The access log's lines leave in batches (one write a pass of the loop):
 * none is lost and the order holds, after a burst of pipelined requests
 * and after SIGTERM stops the service in the middle of a second one. Every
 * answer the client got has its line (the line is logged before the
 * answer is sent), the lines are the requests' order without a gap. */
static void test_access_lines_after_burst_and_sigterm(void **state)
{
    (void)state;
    server s;
    server_prepare(&s, "burst");
    server_start(&s);
    int port = atoi(strrchr(s.url, ':') + 1);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    esim_buf got = {0};
    send_burst(fd, 0, BURST);
    assert_int_equal(read_answers(fd, &got, BURST), BURST);
    /* The burst's lines are written while the service runs on. */
    int logged = 0;
    for (int i = 0; i < 100 && logged < BURST; i++) {
        esim_buf b = {0};
        esim_read_file(s.log, 16 << 20, &b, NULL);
        esim_buf_append(&b, "", 1);
        logged = 0;
        for (const char *p = (const char *)b.data; (p = strstr(p, "path=/burst/")) != NULL; p++)
            logged++;
        esim_buf_free(&b);
        if (logged < BURST)
            usleep(100 * 1000);
    }
    assert_int_equal(logged, BURST);
    /* A second burst, and SIGTERM while it is answered. */
    send_burst(fd, BURST, BURST);
    int status = server_kill(&s, SIGTERM);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    int answered = read_answers(fd, &got, 2 * BURST);
    close(fd);
    esim_buf_free(&got);

    esim_buf b = {0};
    assert_int_equal(esim_read_file(s.log, 16 << 20, &b, NULL), ESIM_OK);
    esim_buf_append(&b, "", 1);
    int next = 0;
    for (const char *p = (const char *)b.data; (p = strstr(p, "path=/burst/")) != NULL; p++) {
        int n = atoi(p + strlen("path=/burst/"));
        if (n != next)
            fail_msg("access line for /burst/%d where /burst/%d was due", n, next);
        next++;
    }
    esim_buf_free(&b);
    assert_true(next >= answered);
    assert_true(next >= BURST);
}

/* ---- crash safety ---- */

typedef struct {
    pid_t pid;
    useconds_t delay_us;
} killer_arg;

static void *killer(void *arg)
{
    killer_arg *k = arg;
    usleep(k->delay_us);
    kill(k->pid, SIGKILL);
    return NULL;
}

static void test_kill_at_random_instants_loses_nothing(void **state)
{
    (void)state;
    server s;
    server_prepare(&s, "crash");
    server_start(&s);
    test_device dev;
    device_new(&dev, &env, "00008130-000000000000000B", s.url);
    dev.sign = SIGN_NONE;
    device_enroll(&dev);
    enum { N = 40 };
    char uuids[N][128];
    for (int i = 0; i < N; i++)
        api_enqueue_refresh(s.url, dev.udid, "smdp.example.com", uuids[i]);

    /* The device's view: commands whose Ack it saw answered with 200. */
    bool acked[N] = {false};
    int acked_count = 0, kills = 0, deliveries = 0;
    srand((unsigned)time(NULL));
    char pending[128] = ""; /* a command received and not yet acknowledged */
    for (int round = 0; round < 200 && acked_count < N; round++) {
        killer_arg k = {s.pid, (useconds_t)(2000 + rand() % 20000)};
        pthread_t kt;
        bool with_killer = kills < 15;
        if (with_killer)
            pthread_create(&kt, NULL, killer, &k);
        /* Work until the server dies (or everything is done). */
        for (;;) {
            esim_buf b = {0}, reply = {0};
            esim_status st = pending[0] ? ESIM_STATUS_ACKNOWLEDGED : ESIM_STATUS_IDLE;
            assert_int_equal(esim_msg_build_result(dev.udid, st, pending[0] ? pending : NULL, NULL,
                                                   0, NULL, ESIM_PLIST_XML, &b, NULL),
                             ESIM_OK);
            long code = 0;
            {
                /* device_put fails the test on transport errors; a dying
                 * server is expected here, so use curl directly. */
                char url[128];
                snprintf(url, sizeof url, "%s/mdm", s.url);
                CURL *c = curl_easy_init();
                FILE *sink = open_memstream((char **)&reply.data, &reply.len);
                curl_easy_setopt(c, CURLOPT_URL, url);
                curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
                curl_easy_setopt(c, CURLOPT_POSTFIELDS, b.data);
                curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)b.len);
                curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
                curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
                CURLcode res = curl_easy_perform(c);
                fclose(sink);
                if (res == CURLE_OK)
                    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
                curl_easy_cleanup(c);
            }
            esim_buf_free(&b);
            if (code != 200) {
                free(reply.data);
                break; /* the server is gone */
            }
            if (st == ESIM_STATUS_ACKNOWLEDGED) {
                for (int i = 0; i < N; i++)
                    if (strcmp(uuids[i], pending) == 0 && !acked[i]) {
                        acked[i] = true;
                        acked_count++;
                    }
                pending[0] = '\0';
            }
            if (reply.len) {
                esim_cmd_parsed cmd;
                assert_int_equal(esim_cmd_parse(reply.data, reply.len, NULL, &cmd, NULL), ESIM_OK);
                deliveries++;
                for (int i = 0; i < N; i++)
                    if (strcmp(uuids[i], cmd.command_uuid) == 0 && acked[i])
                        fail_msg("command %s delivered again after its Ack was answered",
                                 cmd.command_uuid);
                snprintf(pending, sizeof pending, "%s", cmd.command_uuid);
                esim_cmd_parsed_free(&cmd);
            }
            free(reply.data);
            reply.data = NULL;
            if (acked_count == N && !pending[0])
                break;
        }
        if (with_killer) {
            pthread_join(kt, NULL);
            kills++;
        } else {
            kill(s.pid, SIGKILL);
        }
        int status = 0;
        waitpid(s.pid, &status, 0);
        server_start(&s);
        dev.base_url = s.url;
    }
    assert_int_equal(acked_count, N);
    assert_true(kills >= 1);
    /* The ledger agrees: every command acknowledged, nothing left queued. */
    for (int i = 0; i < N; i++) {
        char st[32];
        api_entry_state(s.url, uuids[i], dev.udid, st, NULL, NULL);
        assert_string_equal(st, "acknowledged");
    }
    print_message("%d deliveries of %d commands across %d kills\n", deliveries, N, kills);
    server_kill(&s, SIGTERM);
    device_free(&dev);
}

/* SIGHUP: the keys file and the config file read again and applied
 * without a restart; a bad configuration is refused whole, logged, and the
 * running one kept. */
static void test_sighup_reloads_keys_and_refuses_bad_config(void **state)
{
    (void)state;
    server s;
    server_prepare(&s, "hup");
    char keys[400], text[4096];
    snprintf(keys, sizeof keys, "%s/hup.keys", env.dir);
    harness_write_text(keys, "first read-only first-token-000000000\n");
    chmod(keys, 0600);
    esim_buf conf = {0};
    assert_int_equal(esim_read_file(s.config, 1 << 16, &conf, NULL), ESIM_OK);
    snprintf(text, sizeof text, "%.*sapi-keys-file %s\n", (int)conf.len, (const char *)conf.data,
             keys);
    harness_write_text(s.config, text);
    server_start(&s);
    assert_int_equal(
        api_call(s.url, "first-token-000000000", "GET", "/v1/devices", NULL, NULL, NULL), 200);
    /* New keys: the old one goes, the new one works, the server stays. */
    harness_write_text(keys, "second operator second-token-00000000\n");
    kill(s.pid, SIGHUP);
    long st = 0;
    for (int i = 0; i < 200 && st != 200; i++) {
        st = api_call(s.url, "second-token-00000000", "GET", "/v1/devices", NULL, NULL, NULL);
        if (st != 200)
            usleep(25 * 1000);
    }
    assert_int_equal(st, 200);
    assert_int_equal(
        api_call(s.url, "first-token-000000000", "GET", "/v1/devices", NULL, NULL, NULL), 401);
    /* A bad config file (an unknown option): refused, logged, old kept. */
    snprintf(text, sizeof text, "%.*sapi-keys-file %s\nno-such-option 1\n", (int)conf.len,
             (const char *)conf.data, keys);
    harness_write_text(s.config, text);
    harness_write_text(keys, "third admin third-token-000000000000\n");
    kill(s.pid, SIGHUP);
    char *log = NULL;
    for (int i = 0; i < 200; i++) {
        esim_buf b = {0};
        esim_read_file(s.log, 1 << 20, &b, NULL);
        esim_buf_append(&b, "", 1);
        log = (char *)b.data;
        if (strstr(log, "event=reload_refused"))
            break;
        free(log);
        log = NULL;
        usleep(25 * 1000);
    }
    assert_non_null(log);
    assert_non_null(strstr(log, "no-such-option"));
    assert_non_null(strstr(log, "level=info event=reloaded"));
    assert_null(strstr(log, "second-token"));
    free(log);
    assert_int_equal(
        api_call(s.url, "second-token-00000000", "GET", "/v1/devices", NULL, NULL, NULL), 200);
    assert_int_equal(
        api_call(s.url, "third-token-000000000000", "GET", "/v1/devices", NULL, NULL, NULL), 401);
    esim_buf_free(&conf);
    int status = server_kill(&s, SIGTERM);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* A self-signed push certificate for |topic| (its subject's UID) valid for
 * |days|, and its key, written to |cert| and |key| (0600). */
static void write_push_cert(const char *cert, const char *key, const char *topic, int days)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    assert_non_null(k);
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_NID(n, NID_userId, MBSTRING_ASC, (const unsigned char *)topic, -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"APSP:test", -1, -1,
                               0);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, k);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    FILE *f = fopen(cert, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    chmod(key, 0600);
    X509_free(x);
    EVP_PKEY_free(k);
}

/* Polls GET /v1/pushcert until its topic is |topic| (or 5 s pass). */
static bool pushcert_topic_becomes(const char *url, const char *topic)
{
    for (int i = 0; i < 200; i++) {
        json_t *r = NULL;
        long st = api_call(url, TEST_TOKEN, "GET", "/v1/pushcert", NULL, NULL, &r);
        const char *t = json_string_value(json_object_get(r, "topic"));
        bool same = st == 200 && t && strcmp(t, topic) == 0;
        json_decref(r);
        if (same)
            return true;
        usleep(25 * 1000);
    }
    return false;
}

/* Waits until the server's log holds |needle|; returns the log (free). */
static char *log_with(const server *s, const char *needle)
{
    for (int i = 0; i < 200; i++) {
        esim_buf b = {0};
        esim_read_file(s->log, 1 << 20, &b, NULL);
        esim_buf_append(&b, "", 1);
        if (strstr((char *)b.data, needle))
            return (char *)b.data;
        esim_buf_free(&b);
        usleep(25 * 1000);
    }
    return NULL;
}

/* SIGHUP reads the APNs push certificate and key files again: a new pair
 * replaces the running client (GET /v1/pushcert shows it), an unusable one
 * is refused and the running one kept. */
static void test_sighup_reloads_push_certificate(void **state)
{
    (void)state;
    server s;
    server_prepare(&s, "hupcert");
    char cert[400], key[400], text[4096];
    snprintf(cert, sizeof cert, "%s/hupcert-push.pem", env.dir);
    snprintf(key, sizeof key, "%s/hupcert-push.key", env.dir);
    write_push_cert(cert, key, "com.apple.mgmt.External.first", 30);
    esim_buf conf = {0};
    assert_int_equal(esim_read_file(s.config, 1 << 16, &conf, NULL), ESIM_OK);
    /* Nothing listens on port 9: pushes fail, which does not matter here. */
    snprintf(text, sizeof text, "%.*sapns https://127.0.0.1:9\napns-cert %s\napns-key %s\n",
             (int)conf.len, (const char *)conf.data, cert, key);
    esim_buf_free(&conf);
    harness_write_text(s.config, text);
    server_start(&s);
    assert_true(pushcert_topic_becomes(s.url, "com.apple.mgmt.External.first"));
    /* A renewed certificate in the same files. */
    write_push_cert(cert, key, "com.apple.mgmt.External.second", 365);
    kill(s.pid, SIGHUP);
    char *log = log_with(&s, "event=reload");
    if (!pushcert_topic_becomes(s.url, "com.apple.mgmt.External.second"))
        fail_msg("not reloaded: %s", log ? log : "(no log)");
    free(log);
    log = log_with(&s, "push_cert=new");
    assert_non_null(log);
    assert_null(strstr(log, "restart_needed"));
    free(log);
    /* A certificate file that is not one: refused, the running one kept. */
    harness_write_text(cert, "not a certificate\n");
    kill(s.pid, SIGHUP);
    log = log_with(&s, "event=reload_refused");
    assert_non_null(log);
    free(log);
    assert_true(pushcert_topic_becomes(s.url, "com.apple.mgmt.External.second"));
    int status = server_kill(&s, SIGTERM);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* Every command's --help names the same port for the same part: the
 * service 8080, the APNs mock 2197 (delivery 2198), the SM-DP+ 9443, the
 * device simulator's status 7070, the WNS mock 2443 (delivery 2444), vpcd
 * 35963; 8443 only for an example service behind TLS. */
static void test_help_texts_agree_on_ports(void **state)
{
    (void)state;
    static const char *const cmds[] = {
        "compose", "check",  "pki",      "serve", "enqueue",   "status",   "devices",
        "cancel",  "retire", "audit",    "push",  "apns-mock", "wns-mock", "smdp",
        "devsim",  "sim",    "campaign", "iot",   "diagnose",  "import",   "demo"};
    static const int known[] = {8080, 8443, 2197, 2198, 9443, 7070, 2443, 2444, 35963};
    size_t ports_seen = 0;
    for (size_t k = 0; k < sizeof cmds / sizeof cmds[0]; k++) {
        char cmd[600], out[16384];
        snprintf(cmd, sizeof cmd, "'%s' %s --help 2>&1", bin, cmds[k]);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        size_t got = fread(out, 1, sizeof out - 1, p);
        out[got] = '\0';
        pclose(p);
        assert_true(got > 0);
        /* Every HOST:PORT with a literal port (not PORT, not 0). */
        for (const char *c = strstr(out, "127.0.0.1:"); c; c = strstr(c + 1, "127.0.0.1:")) {
            int port = atoi(c + 10);
            if (port == 0)
                continue;
            bool ok = false;
            for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
                ok |= port == known[i];
            if (!ok)
                fail_msg("esim-mdm %s --help names port %d: %.60s", cmds[k], port, c);
            ports_seen++;
        }
        /* The SM-DP+ is 9443 wherever an example points at it on loopback. */
        for (const char *c = strstr(out, "--smdp https://127.0.0.1:"); c;
             c = strstr(c + 1, "--smdp https://127.0.0.1:"))
            assert_int_equal(atoi(c + 25), 9443);
    }
    assert_true(ports_seen >= 10);
}

/* Issue 10 item 10: serve refuses an API token or webhook secret file that
 * other users may read, naming the file and the fix, and starts nothing. */
static void test_serve_refuses_readable_secrets(void **state)
{
    (void)state;
    server s;
    server_prepare(&s, "loose");
    const char *flags[] = {"--api-token-file", "--webhook-secret-file"};
    for (size_t k = 0; k < 2; k++) {
        char secret[450], cmd[2000], out[4096] = "";
        snprintf(secret, sizeof secret, "%s.%zu", s.token_file, k);
        harness_write_text(secret, "s3cret\n");
        chmod(secret, 0644);
        snprintf(cmd, sizeof cmd,
                 "'%s' serve --config '%s' %s '%s' --webhook http://127.0.0.1:9/h 2>&1", bin,
                 s.config, flags[k], secret);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        size_t got = fread(out, 1, sizeof out - 1, p);
        out[got] = '\0';
        int st = pclose(p);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
        assert_non_null(strstr(out, secret));
        assert_non_null(strstr(out, "chmod 600"));
        assert_null(strstr(out, "s3cret"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_clients_and_config_file),
        cmocka_unit_test(test_access_lines_after_burst_and_sigterm),
        cmocka_unit_test(test_kill_at_random_instants_loses_nothing),
        cmocka_unit_test(test_serve_refuses_readable_secrets),
        cmocka_unit_test(test_sighup_reloads_push_certificate),
        cmocka_unit_test(test_help_texts_agree_on_ports),
        cmocka_unit_test(test_sighup_reloads_keys_and_refuses_bad_config),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
