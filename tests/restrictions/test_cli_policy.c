/*
 * test_cli_policy.c — `esim-mdm compose restrictions` and `compose
 * windows-csp` as a user runs them: exit codes (0 / 2), help with examples,
 * the profile or SyncML on stdout (parsed back), errors on stderr only.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <libxml/parser.h>

#include "restrictions/restrictions.h"

extern char **environ;

#define VALID_EID "89882119900000000000000000001654"

typedef struct {
    char dir[64];
    const char *bin;
} fixture;

typedef struct {
    int status; /* exit code, or -1 when killed by a signal */
    esim_buf out, err;
} run_result;

static void run_result_free(run_result *r)
{
    esim_buf_free(&r->out);
    esim_buf_free(&r->err);
}

/* Runs `esim-mdm compose <args...>` (NULL-terminated) with stdout and
 * stderr captured in files of the fixture's directory. */
static void run_compose(const fixture *fx, run_result *r, ...)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)fx->bin;
    argv[argc++] = (char *)"compose";
    va_list ap;
    va_start(ap, r);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < 31);
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;

    char out_path[128], err_path[128];
    snprintf(out_path, sizeof out_path, "%s/stdout", fx->dir);
    snprintf(err_path, sizeof err_path, "%s/stderr", fx->dir);
    posix_spawn_file_actions_t fa;
    assert_int_equal(posix_spawn_file_actions_init(&fa), 0);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid;
    assert_int_equal(posix_spawn(&pid, fx->bin, &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int ws = 0;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    r->status = WIFEXITED(ws) ? WEXITSTATUS(ws) : -1;
    memset(&r->out, 0, sizeof r->out);
    memset(&r->err, 0, sizeof r->err);
    assert_int_equal(esim_read_file(out_path, 1 << 20, &r->out, NULL), ESIM_OK);
    assert_int_equal(esim_read_file(err_path, 1 << 20, &r->err, NULL), ESIM_OK);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    fx->bin = getenv("ESIM_MDM_BIN");
    snprintf(fx->dir, sizeof fx->dir, "/tmp/esim-cli-policy-XXXXXX");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    const char *names[] = {"stdout", "stderr", "signer.pem", "signer.key"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s/%s", fx->dir, names[i]);
        unlink(p);
    }
    rmdir(fx->dir);
    free(fx);
    return 0;
}

/* Skips when the program is missing, or when `compose` does not reach this
 * area yet (cmd_compose.c belongs to plist/'s CLI work). */
static void require_binary(const fixture *fx)
{
    if (!fx->bin || access(fx->bin, X_OK) != 0)
        skip();
    run_result r;
    run_compose(fx, &r, "restrictions", "--help", NULL);
    bool reachable = r.status == 0 && strstr((const char *)r.out.data, "compose restrictions");
    run_result_free(&r);
    if (!reachable)
        skip();
}

static void assert_usage_error(const run_result *r, const char *message_part)
{
    assert_int_equal(r->status, 2);
    assert_int_equal(r->out.len, 0);
    if (!strstr((const char *)r->err.data, message_part))
        fail_msg("stderr '%s' does not mention '%s'", (const char *)r->err.data, message_part);
}

static void test_help_teaches(void **state)
{
    fixture *fx = *state;
    require_binary(fx);
    const char *subs[] = {"restrictions", "windows-csp"};
    for (size_t i = 0; i < 2; i++) {
        run_result r;
        run_compose(fx, &r, subs[i], "--help", NULL);
        assert_int_equal(r.status, 0);
        assert_non_null(strstr((const char *)r.out.data, "usage: esim-mdm compose"));
        assert_non_null(strstr((const char *)r.out.data, "examples:"));
        assert_int_equal(r.err.len, 0);
        run_result_free(&r);
    }
}

static void test_restrictions_profile_on_stdout(void **state)
{
    fixture *fx = *state;
    require_binary(fx);
    run_result r;
    run_compose(fx, &r, "restrictions", "--esim-modification", "deny",
                "--preserve-esim-on-erase=on", "--esim-outgoing-transfers", "deny",
                "--cellular-plan-modification", "allow", "--identifier", "com.example.cli", NULL);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.err.len, 0);
    plist_t root = NULL;
    bool was_signed = true;
    assert_int_equal(esim_profile_parse(r.out.data, r.out.len, NULL, &root, &was_signed, NULL),
                     ESIM_OK);
    assert_false(was_signed);
    plist_t payload = plist_array_get_item(plist_dict_get_item(root, "PayloadContent"), 0);
    esim_policy p;
    assert_int_equal(esim_policy_from_payload(payload, &p, NULL), ESIM_OK);
    esim_policy want = {ESIM_TRI_FALSE, ESIM_TRI_TRUE, ESIM_TRI_FALSE, ESIM_TRI_TRUE};
    assert_memory_equal(&p, &want, sizeof p);
    assert_string_equal(plist_get_string_ptr(plist_dict_get_item(root, "PayloadIdentifier"), NULL),
                        "com.example.cli");
    plist_free(root);
    run_result_free(&r);
}

static void test_restrictions_signed(void **state)
{
    fixture *fx = *state;
    require_binary(fx);
    char cert[128], key[128];
    snprintf(cert, sizeof cert, "%s/signer.pem", fx->dir);
    snprintf(key, sizeof key, "%s/signer.key", fx->dir);
    esim_cert_spec spec = {.common_name = "cli signer", .key_type = ESIM_KEY_EC_P256};
    esim_cert c = {0};
    assert_int_equal(esim_cert_issue(&spec, NULL, &c, NULL), ESIM_OK);
    assert_int_equal(esim_cert_save(&c, cert, key, NULL), ESIM_OK);
    esim_cert_clear(&c);

    run_result r;
    run_compose(fx, &r, "restrictions", "--esim-modification", "deny", "--sign-cert", cert,
                "--sign-key", key, NULL);
    assert_int_equal(r.status, 0);
    plist_t root = NULL;
    bool was_signed = false;
    assert_int_equal(esim_profile_parse(r.out.data, r.out.len, NULL, &root, &was_signed, NULL),
                     ESIM_OK);
    assert_true(was_signed);
    plist_free(root);
    run_result_free(&r);

    run_compose(fx, &r, "restrictions", "--esim-modification", "deny", "--sign-cert", cert, NULL);
    assert_usage_error(&r, "--sign-key");
    run_result_free(&r);
    run_compose(fx, &r, "restrictions", "--esim-modification", "deny", "--sign-cert",
                "/nonexistent/signer.pem", "--sign-key", key, NULL);
    assert_usage_error(&r, "signing certificate");
    run_result_free(&r);
}

static void test_restrictions_warns_for_device(void **state)
{
    fixture *fx = *state;
    require_binary(fx);
    run_result r;
    run_compose(fx, &r, "restrictions", "--preserve-esim-on-erase", "on", "--device-os", "17.1",
                NULL);
    assert_int_equal(r.status, 0);
    assert_true(r.out.len > 0);
    assert_non_null(strstr((const char *)r.err.data, "forcePreserveESIMOnErase"));
    assert_non_null(strstr((const char *)r.err.data, "17.2"));
    run_result_free(&r);
    run_compose(fx, &r, "restrictions", "--esim-modification", "deny", "--device-os", "18.1",
                "--unsupervised", NULL);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr((const char *)r.err.data, "supervised"));
    run_result_free(&r);
}

static void test_restrictions_bad_input(void **state)
{
    fixture *fx = *state;
    require_binary(fx);
    run_result r;
    run_compose(fx, &r, "restrictions", NULL);
    assert_usage_error(&r, "at least one");
    run_result_free(&r);
    run_compose(fx, &r, "restrictions", "--esim-modification", "maybe", NULL);
    assert_usage_error(&r, "allow or deny");
    run_result_free(&r);
    run_compose(fx, &r, "restrictions", "--preserve-esim-on-erase", NULL);
    assert_usage_error(&r, "needs a value");
    run_result_free(&r);
    run_compose(fx, &r, "restrictions", "--esim-modification", "deny", "--esim-modification",
                "allow", NULL);
    assert_usage_error(&r, "twice");
    run_result_free(&r);
    run_compose(fx, &r, "restrictions", "--esim-modification", "deny", "--frobnicate", NULL);
    assert_usage_error(&r, "unknown option");
    run_result_free(&r);
    run_compose(fx, &r, "restrictions", "--esim-modification", "deny", "--device-os", "seventeen",
                NULL);
    assert_usage_error(&r, "--device-os");
    run_result_free(&r);
}

static void test_windows_csp(void **state)
{
    fixture *fx = *state;
    require_binary(fx);
    run_result r;
    run_compose(fx, &r, "windows-csp", "--eid", VALID_EID, "--server", "smdp.example.com",
                "--auto-enable", "--local-ui", "off", "--reset-to-factory", NULL);
    assert_int_equal(r.status, 0);
    assert_int_equal(r.err.len, 0);
    xmlDocPtr doc =
        xmlReadMemory((const char *)r.out.data, (int)r.out.len, "cli.xml", NULL, XML_PARSE_NONET);
    assert_non_null(doc);
    xmlFreeDoc(doc);
    assert_non_null(strstr((const char *)r.out.data,
                           "<LocURI>./Device/Vendor/MSFT/eUICCs/" VALID_EID
                           "/DownloadServers/smdp.example.com/AutoEnable</LocURI>"));
    run_result_free(&r);

    run_compose(fx, &r, "windows-csp", "--server", "smdp.example.com", NULL);
    assert_usage_error(&r, "--eid");
    run_result_free(&r);
    run_compose(fx, &r, "windows-csp", "--eid", "89882119900000000000000000001600",
                "--reset-to-factory", NULL);
    assert_usage_error(&r, "EID");
    run_result_free(&r);
    run_compose(fx, &r, "windows-csp", "--eid", VALID_EID, "--server", "smdp.example.com",
                "--local-ui", "off", NULL);
    assert_usage_error(&r, "AutoEnable");
    run_result_free(&r);
    run_compose(fx, &r, "windows-csp", "--eid", VALID_EID, "--local-ui", "maybe", NULL);
    assert_usage_error(&r, "on or off");
    run_result_free(&r);
    run_compose(fx, &r, "windows-csp", "--eid", VALID_EID, NULL);
    assert_usage_error(&r, "nothing to do");
    run_result_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_help_teaches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restrictions_profile_on_stdout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restrictions_signed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restrictions_warns_for_device, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restrictions_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_windows_csp, setup, teardown),
    };
    xmlInitParser();
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    xmlCleanupParser();
    return failed;
}
