/*
 * test_apns_cli.c — `esim-mdm apns-mock` and `esim-mdm push` as a user runs
 * them: real processes on loopback, JSON lines out, exit statuses, bad
 * certificate/key/token-file input and an unreachable APNs host.
 */
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

#include <jansson.h>

#include "apns_test.h"

typedef struct {
    test_pki pki;
    const char *bin;
    pid_t mock_pid;
    FILE *mock_out;
    int tls_port, delivery_port;
    char tokens[320];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->bin = getenv("ESIM_MDM_BIN");
    assert_non_null(f->bin);
    pki_make(&f->pki);
    snprintf(f->tokens, sizeof f->tokens, "%s/tokens.txt", f->pki.dir);
    *state = f;
    return 0;
}

static void mock_kill(fixture *f, int *exit_status)
{
    if (f->mock_pid <= 0)
        return;
    kill(f->mock_pid, SIGTERM);
    int st = 0;
    waitpid(f->mock_pid, &st, 0);
    if (exit_status)
        *exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    f->mock_pid = 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    mock_kill(f, NULL);
    if (f->mock_out)
        fclose(f->mock_out);
    pki_remove(&f->pki);
    free(f);
    return 0;
}

/* Starts `esim-mdm apns-mock` and reads the ports from its first line. */
static void mock_spawn(fixture *f, const char *extra)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "exec '%s' apns-mock --listen 127.0.0.1:0 --delivery-listen 127.0.0.1:0 "
             "--tls-cert '%s' --tls-key '%s' --client-ca '%s' %s",
             f->bin, pki_path(&f->pki, "server.pem"), pki_path(&f->pki, "server.key"),
             pki_path(&f->pki, "ca.pem"), extra);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    f->mock_pid = pid;
    f->mock_out = fdopen(fds[0], "r");
    char line[512];
    assert_non_null(fgets(line, sizeof line, f->mock_out));
    json_t *j = json_loads(line, 0, NULL);
    assert_non_null(j);
    json_t *l = json_object_get(j, "listening");
    f->tls_port = (int)json_integer_value(json_object_get(l, "tls"));
    f->delivery_port = (int)json_integer_value(json_object_get(l, "delivery"));
    json_decref(j);
    assert_true(f->tls_port > 0 && f->delivery_port > 0);
}

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

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* `esim-mdm push` against the mock; stdout in |out|, stderr in |errs|. */
static int push(fixture *f, const char *cert, const char *key, const char *url_port_override,
                esim_buf *out, esim_buf *errs)
{
    char errfile[400], cmd[3000];
    snprintf(errfile, sizeof errfile, "%s/push.err", f->pki.dir);
    char url[128];
    if (url_port_override)
        snprintf(url, sizeof url, "%s", url_port_override);
    else
        snprintf(url, sizeof url, "https://localhost:%d", f->tls_port);
    snprintf(cmd, sizeof cmd,
             "'%s' push --apns %s --cert '%s' --key '%s' --ca '%s' --tokens '%s' "
             "--connections 2 --concurrency 50 2>'%s'",
             f->bin, url, cert, key, pki_path(&f->pki, "ca.pem"), f->tokens, errfile);
    int rc = run_cmd(cmd, out);
    esim_read_file(errfile, 1 << 20, errs, NULL);
    return rc;
}

/* Splits JSON lines; returns the summary object (caller decrefs) and the
 * number of per-push lines in *pushes; each push line is checked. */
static json_t *parse_output(esim_buf *out, size_t *pushes, size_t *accepted)
{
    json_t *summary = NULL;
    *pushes = *accepted = 0;
    char *line = (char *)out->data;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        json_t *j = json_loads(line, 0, NULL);
        if (j == NULL)
            fail_msg("not a JSON line: %s", line);
        if (json_object_get(j, "summary")) {
            summary = json_incref(json_object_get(j, "summary"));
        } else {
            (*pushes)++;
            assert_non_null(json_string_value(json_object_get(j, "token")));
            assert_true(json_is_integer(json_object_get(j, "status")));
            assert_true(json_is_string(json_object_get(j, "reason")));
            assert_true(json_is_string(json_object_get(j, "apns_id")));
            assert_true(json_integer_value(json_object_get(j, "attempts")) >= 0);
            if (strcmp(json_string_value(json_object_get(j, "outcome")), "accepted") == 0)
                (*accepted)++;
        }
        json_decref(j);
        line = nl ? nl + 1 : NULL;
    }
    assert_non_null(summary);
    return summary;
}

static void write_tokens(fixture *f, unsigned n, const char *extra)
{
    esim_buf b = {0};
    for (unsigned i = 0; i < n; i++) {
        char token[65];
        make_token(token, i);
        esim_buf_printf(&b, "%s magic-%u\n", token, i);
    }
    if (extra)
        esim_buf_append_str(&b, extra);
    write_file(f->tokens, (const char *)b.data);
    esim_buf_free(&b);
}

static void test_push_all_accepted(void **state)
{
    fixture *f = *state;
    mock_spawn(f, "");
    write_tokens(f, 120, "# a comment\n\n");
    esim_buf out = {0}, errs = {0};
    int rc =
        push(f, pki_path(&f->pki, "push.pem"), pki_path(&f->pki, "push.key"), NULL, &out, &errs);
    assert_int_equal(rc, 0);
    size_t pushes, accepted;
    json_t *s = parse_output(&out, &pushes, &accepted);
    assert_int_equal(pushes, 120);
    assert_int_equal(accepted, 120);
    assert_int_equal(json_integer_value(json_object_get(s, "accepted")), 120);
    assert_true(json_real_value(json_object_get(s, "pushes_per_second")) > 0);
    json_decref(s);
    int st;
    mock_kill(f, &st);
    assert_int_equal(st, 0); /* a clean stop on SIGTERM, with its counters */
    char line[1024];
    assert_non_null(fgets(line, sizeof line, f->mock_out));
    json_t *j = json_loads(line, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "stats"), "accepted")),
                     120);
    json_decref(j);
    esim_buf_free(&out);
    esim_buf_free(&errs);
}

static void test_push_bad_line_and_dead_token(void **state)
{
    fixture *f = *state;
    char dead[65], deadfile[400], flags[600];
    make_token(dead, 3);
    snprintf(deadfile, sizeof deadfile, "%s/dead.txt", f->pki.dir);
    write_file(deadfile, dead);
    snprintf(flags, sizeof flags, "--dead-tokens '%s'", deadfile);
    mock_spawn(f, flags);
    write_tokens(f, 5, "nothex magic\nabcd\n");
    esim_buf out = {0}, errs = {0};
    int rc =
        push(f, pki_path(&f->pki, "push.pem"), pki_path(&f->pki, "push.key"), NULL, &out, &errs);
    assert_int_equal(rc, 1); /* sent, but not everything went through */
    assert_non_null(strstr((char *)errs.data, "line 6"));
    assert_non_null(strstr((char *)errs.data, "line 7"));
    assert_non_null(strstr((char *)out.data, "\"reason\":\"Unregistered\""));
    size_t pushes, accepted;
    json_t *s = parse_output(&out, &pushes, &accepted);
    assert_int_equal(pushes, 5);
    assert_int_equal(accepted, 4);
    assert_int_equal(json_integer_value(json_object_get(s, "token_dead")), 1);
    assert_int_equal(json_integer_value(json_object_get(s, "bad_lines")), 2);
    json_decref(s);
    esim_buf_free(&out);
    esim_buf_free(&errs);
}

static void test_push_bad_certificate(void **state)
{
    fixture *f = *state;
    write_tokens(f, 2, NULL);
    esim_buf out = {0}, errs = {0};
    /* not a certificate at all */
    int rc = push(f, f->tokens, pki_path(&f->pki, "push.key"), "https://127.0.0.1:9", &out, &errs);
    assert_int_equal(rc, 2);
    assert_non_null(strstr((char *)errs.data, "certificate"));
    /* a key that does not match */
    rc = push(f, pki_path(&f->pki, "push.pem"), pki_path(&f->pki, "server.key"),
              "https://127.0.0.1:9", &out, &errs);
    assert_int_equal(rc, 2);
    assert_non_null(strstr((char *)errs.data, "does not match"));
    /* missing file */
    rc = push(f, "/nonexistent.pem", pki_path(&f->pki, "push.key"), "https://127.0.0.1:9", &out,
              &errs);
    assert_int_equal(rc, 2);
    assert_non_null(strstr((char *)errs.data, "/nonexistent.pem"));
    /* a push certificate from a CA the mock does not know: refused in the
     * handshake, every push ends unreachable */
    esim_cert rogue = {0};
    esim_cert_spec spec = {.common_name = "rogue", .uid = f->pki.topic, .client_auth = true};
    assert_int_equal(esim_cert_issue(&spec, NULL, &rogue, NULL), ESIM_OK);
    assert_int_equal(esim_cert_save(&rogue, pki_path(&f->pki, "rogue.pem"),
                                    pki_path(&f->pki, "rogue.key"), NULL),
                     ESIM_OK);
    esim_cert_clear(&rogue);
    mock_spawn(f, "");
    rc = push(f, pki_path(&f->pki, "rogue.pem"), pki_path(&f->pki, "rogue.key"), NULL, &out, &errs);
    assert_int_equal(rc, 1);
    size_t pushes, accepted;
    json_t *s = parse_output(&out, &pushes, &accepted);
    assert_int_equal(json_integer_value(json_object_get(s, "unreachable")), 2);
    json_decref(s);
    esim_buf_free(&out);
    esim_buf_free(&errs);
}

static void test_push_unreachable(void **state)
{
    fixture *f = *state;
    write_tokens(f, 3, NULL);
    esim_buf out = {0}, errs = {0};
    /* port 9 (discard) on loopback: nothing listens there */
    int rc = push(f, pki_path(&f->pki, "push.pem"), pki_path(&f->pki, "push.key"),
                  "https://127.0.0.1:9", &out, &errs);
    assert_int_equal(rc, 1);
    size_t pushes, accepted;
    json_t *s = parse_output(&out, &pushes, &accepted);
    assert_int_equal(pushes, 3);
    assert_int_equal(json_integer_value(json_object_get(s, "unreachable")), 3);
    assert_non_null(strstr((char *)out.data, "refused"));
    json_decref(s);
    /* a token file with nothing to send */
    write_file(f->tokens, "bad line\n");
    rc = push(f, pki_path(&f->pki, "push.pem"), pki_path(&f->pki, "push.key"),
              "https://127.0.0.1:9", &out, &errs);
    assert_int_equal(rc, 2);
    esim_buf_free(&out);
    esim_buf_free(&errs);
}

static void test_usage(void **state)
{
    fixture *f = *state;
    esim_buf out = {0};
    char cmd[600];
    static const char *const flags[] = {"--listen",
                                        "--tls-cert",
                                        "--tls-key",
                                        "--client-ca",
                                        "--h2c-listen",
                                        "--open-listen",
                                        "--delivery-listen",
                                        "--dead-tokens",
                                        "--fail-rate",
                                        "--goaway-every",
                                        "--delay-ms",
                                        "--benchmark",
                                        "--reset-every",
                                        "--max-streams",
                                        "--drop-streams-on-reject",
                                        "--seed",
                                        "--topic",
                                        "--token-key",
                                        "--delivery-cap"};
    snprintf(cmd, sizeof cmd, "'%s' apns-mock --help", f->bin);
    assert_int_equal(run_cmd(cmd, &out), 0);
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (strstr((char *)out.data, flags[i]) == NULL)
            fail_msg("apns-mock --help does not list %s", flags[i]);
    snprintf(cmd, sizeof cmd, "'%s' push --help", f->bin);
    assert_int_equal(run_cmd(cmd, &out), 0);
    static const char *const push_flags[] = {"--apns",        "--cert",       "--key",
                                             "--ca",          "--topic",      "--tokens",
                                             "--connections", "--concurrency"};
    for (size_t i = 0; i < sizeof push_flags / sizeof push_flags[0]; i++)
        assert_non_null(strstr((char *)out.data, push_flags[i]));
    snprintf(cmd, sizeof cmd, "'%s' apns-mock --fail-rate 503=7 --listen 127.0.0.1:0 2>/dev/null",
             f->bin);
    assert_int_equal(run_cmd(cmd, &out), 2);
    snprintf(cmd, sizeof cmd, "'%s' apns-mock --listen 127.0.0.1:0 2>/dev/null", f->bin);
    assert_int_equal(run_cmd(cmd, &out), 2); /* no certificates */
    snprintf(cmd, sizeof cmd, "'%s' push --tokens x 2>/dev/null", f->bin);
    assert_int_equal(run_cmd(cmd, &out), 2);
    snprintf(cmd, sizeof cmd,
             "'%s' push --apns https://x --cert a --tokens /nonexistent 2>/dev/null", f->bin);
    assert_int_equal(run_cmd(cmd, &out), 2);
    esim_buf_free(&out);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_push_all_accepted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_bad_line_and_dead_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_bad_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_unreachable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
