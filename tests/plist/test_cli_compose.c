/*
 * test_cli_compose.c — `esim-mdm compose ...` and `esim-mdm check ...` run as
 * a user runs them: the real binary ($ESIM_MDM_BIN), stdout parsed back with
 * the library, exit statuses and the words on stderr checked.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "plist/esim_plist.h"

typedef struct {
    char dir[64];
    const char *bin;
} fixture;

typedef struct {
    int status;
    esim_buf out, err;
} run_result;

static void run_result_free(run_result *r)
{
    esim_buf_free(&r->out);
    esim_buf_free(&r->err);
}

typedef struct {
    char s[256];
} path_buf;

static path_buf path_in(const fixture *f, const char *name)
{
    path_buf p;
    snprintf(p.s, sizeof p.s, "%s/%s", f->dir, name);
    return p;
}

/* Runs esim-mdm with |args| (NULL-terminated), stdin from |stdin_path|
 * (NULL: /dev/null), stdout and stderr to files. */
static run_result run_with_input(const fixture *f, const char *stdin_path, const char *const *args)
{
    const char *argv[32];
    size_t n = 0;
    argv[n++] = f->bin;
    for (; args[n - 1] && n < 31; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    path_buf out_file = path_in(f, "stdout"), err_file = path_in(f, "stderr");
    const char *out_path = out_file.s, *err_path = err_file.s;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int i = open(stdin_path ? stdin_path : "/dev/null", O_RDONLY);
        if (o < 0 || e < 0 || i < 0)
            _exit(127);
        dup2(i, STDIN_FILENO);
        dup2(o, STDOUT_FILENO);
        dup2(e, STDERR_FILENO);
        execv(f->bin, (char *const *)argv);
        _exit(127);
    }
    int wstatus = 0;
    assert_int_equal(waitpid(pid, &wstatus, 0), pid);
    assert_true(WIFEXITED(wstatus));
    run_result r = {.status = WEXITSTATUS(wstatus)};
    assert_int_equal(esim_read_file(out_path, 1 << 22, &r.out, NULL), ESIM_OK);
    assert_int_equal(esim_read_file(err_path, 1 << 22, &r.err, NULL), ESIM_OK);
    unlink(out_path);
    unlink(err_path);
    return r;
}

#define RUN(f, ...) run_with_input((f), NULL, (const char *const[]){__VA_ARGS__, NULL})
#define RUN_STDIN(f, in, ...) run_with_input((f), (in), (const char *const[]){__VA_ARGS__, NULL})

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->bin = getenv("ESIM_MDM_BIN");
    if (!f->bin || access(f->bin, X_OK) != 0) {
        fprintf(stderr, "ESIM_MDM_BIN is not set to the built esim-mdm\n");
        free(f);
        return -1;
    }
    strcpy(f->dir, "/tmp/esim-cli-compose-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    static const char *const leftovers[] = {
        "stdout",   "stderr",     "plain.mobileconfig", "signed.mobileconfig",
        "junk.bin", "signer.pem", "signer.key"};
    for (size_t k = 0; k < sizeof leftovers / sizeof leftovers[0]; k++)
        unlink(path_in(f, leftovers[k]).s);
    int rc = rmdir(f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* Parses stdout as a command; the caller frees |p|. */
static void parse_out(const run_result *r, const char *request_type, esim_cmd_parsed *p)
{
    esim_error err = {{0}};
    if (esim_cmd_parse(r->out.data, r->out.len, NULL, p, &err) != ESIM_OK)
        fail_msg("stdout is not a command: %s; stderr: %s", err.msg,
                 r->err.data ? (char *)r->err.data : "");
    assert_string_equal(p->request_type, request_type);
}

static bool command_flag(const esim_cmd_parsed *p, const char *key)
{
    plist_t n = plist_dict_get_item(p->command, key);
    if (!n || plist_get_node_type(n) != PLIST_BOOLEAN)
        return false;
    uint8_t v = 0;
    plist_get_bool_val(n, &v);
    return v;
}

static void test_refresh_plans(void **state)
{
    fixture *f = *state;
    run_result r = RUN(f, "compose", "refresh-plans", "--server-url", "smdp.example.com");
    assert_int_equal(r.status, 0);
    esim_cmd_parsed p;
    parse_out(&r, "RefreshCellularPlans", &p);
    assert_string_equal(plist_get_string_ptr(plist_dict_get_item(p.command, "eSIMServerURL"), NULL),
                        "https://smdp.example.com");
    assert_true(esim_uuid_valid(p.command_uuid));
    assert_false(command_flag(&p, "RequestRequiresNetworkTether"));
    esim_cmd_parsed_free(&p);
    run_result_free(&r);

    r = RUN(f, "compose", "refresh-plans", "--server-url=https://smdp.example.com/es9",
            "--network-tether", "--uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", "--binary");
    assert_int_equal(r.status, 0);
    assert_memory_equal(r.out.data, "bplist00", 8);
    parse_out(&r, "RefreshCellularPlans", &p);
    assert_string_equal(p.command_uuid, "0f8fad5b-d9cb-469f-a165-70867728950e");
    assert_true(command_flag(&p, "RequestRequiresNetworkTether"));
    esim_cmd_parsed_free(&p);
    run_result_free(&r);
}

static void test_refresh_plans_refusals(void **state)
{
    fixture *f = *state;
    static const char *const bad_urls[] = {"ftp://smdp.example.com", "", "smdp example.com",
                                           "https://"};
    for (size_t k = 0; k < sizeof bad_urls / sizeof bad_urls[0]; k++) {
        run_result r = RUN(f, "compose", "refresh-plans", "--server-url", bad_urls[k]);
        assert_int_equal(r.status, 2);
        assert_int_equal(r.out.len, 0);
        assert_non_null(strstr((char *)r.err.data, "smdp.example.com"));
        run_result_free(&r);
    }
    run_result r = RUN(f, "compose", "refresh-plans");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr((char *)r.err.data, "--server-url"));
    run_result_free(&r);
    r = RUN(f, "compose", "refresh-plans", "--server-url");
    assert_int_equal(r.status, 2);
    run_result_free(&r);
    /* Any CommandUUID Apple allows: a string, not necessarily a UUID. */
    r = RUN(f, "compose", "refresh-plans", "--server-url", "a.example.com", "--uuid",
            "vendor-cmd:42");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr((char *)r.out.data, "<string>vendor-cmd:42</string>"));
    run_result_free(&r);
    r = RUN(f, "compose", "refresh-plans", "--server-url", "a.example.com", "--uuid", "");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr((char *)r.err.data, "CommandUUID"));
    run_result_free(&r);
    r = RUN(f, "compose", "refresh-plans", "--server-url", "a.example.com", "--bogus");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr((char *)r.err.data, "--bogus"));
    run_result_free(&r);
}

static void test_erase(void **state)
{
    fixture *f = *state;
    run_result r = RUN(f, "compose", "erase", "--preserve-data-plan", "--disallow-proximity-setup");
    assert_int_equal(r.status, 0);
    esim_cmd_parsed p;
    parse_out(&r, "EraseDevice", &p);
    assert_true(command_flag(&p, "PreserveDataPlan"));
    assert_true(command_flag(&p, "DisallowProximitySetup"));
    assert_null(plist_dict_get_item(p.command, "PIN"));
    esim_cmd_parsed_free(&p);
    run_result_free(&r);

    r = RUN(f, "compose", "erase", "--pin", "123456", "--obliteration", "Always");
    assert_int_equal(r.status, 0);
    parse_out(&r, "EraseDevice", &p);
    assert_false(command_flag(&p, "PreserveDataPlan"));
    assert_string_equal(plist_get_string_ptr(plist_dict_get_item(p.command, "PIN"), NULL),
                        "123456");
    esim_cmd_parsed_free(&p);
    run_result_free(&r);

    r = RUN(f, "compose", "erase", "--pin", "12");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr((char *)r.err.data, "6 digits"));
    run_result_free(&r);
    r = RUN(f, "compose", "erase", "--obliteration", "Never");
    assert_int_equal(r.status, 2);
    run_result_free(&r);
    r = RUN(f, "compose", "erase", "--wifi-profile", "x.mobileconfig");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr((char *)r.err.data, "--return-to-service"));
    run_result_free(&r);
}

static void write_file(const char *path, const void *data, size_t len)
{
    assert_int_equal(esim_write_file_atomic(path, data, len, 0600, NULL), ESIM_OK);
}

static void make_profile(esim_buf *out)
{
    plist_t payload =
        esim_payload_new("com.apple.applicationaccess", "com.example.esim.r", NULL, NULL);
    plist_dict_set_item(payload, "allowESIMModification", plist_new_bool(0));
    esim_profile_opts opts = {.identifier = "com.example.esim"};
    assert_int_equal(esim_profile_build(&opts, &payload, 1, ESIM_PLIST_XML, out, NULL), ESIM_OK);
    plist_free(payload);
}

static void check_install_payload(const run_result *r, const esim_buf *expected, bool want_signed)
{
    esim_cmd_parsed p;
    parse_out(r, "InstallProfile", &p);
    uint64_t n = 0;
    const char *payload = plist_get_data_ptr(plist_dict_get_item(p.command, "Payload"), &n);
    assert_non_null(payload);
    if (expected) {
        assert_int_equal(n, expected->len);
        assert_memory_equal(payload, expected->data, n);
    }
    plist_t root = NULL;
    bool was_signed = !want_signed;
    assert_int_equal(esim_profile_parse(payload, n, NULL, &root, &was_signed, NULL), ESIM_OK);
    assert_int_equal(was_signed, want_signed);
    plist_free(root);
    esim_cmd_parsed_free(&p);
}

static void test_install_profile(void **state)
{
    fixture *f = *state;
    esim_buf plain = {0}, signed_der = {0};
    make_profile(&plain);
    esim_cert signer = {0};
    esim_cert_spec spec = {.common_name = "Profile Signer"};
    assert_int_equal(esim_cert_issue(&spec, NULL, &signer, NULL), ESIM_OK);
    assert_int_equal(esim_profile_sign(plain.data, plain.len, &signer, &signed_der, NULL), ESIM_OK);
    path_buf plain_file = path_in(f, "plain.mobileconfig");
    path_buf signed_file = path_in(f, "signed.mobileconfig");
    path_buf junk_file = path_in(f, "junk.bin");
    path_buf cert_file = path_in(f, "signer.pem");
    path_buf key_file = path_in(f, "signer.key");
    path_buf missing_file = path_in(f, "missing.mobileconfig");
    const char *plain_path = plain_file.s, *signed_path = signed_file.s, *junk_path = junk_file.s;
    const char *cert_path = cert_file.s, *key_path = key_file.s;
    write_file(plain_path, plain.data, plain.len);
    write_file(signed_path, signed_der.data, signed_der.len);
    write_file(junk_path, "\x30\x80junk", 6);
    assert_int_equal(esim_cert_save(&signer, cert_path, key_path, NULL), ESIM_OK);

    run_result r = RUN(f, "compose", "install-profile", "--file", plain_path);
    assert_int_equal(r.status, 0);
    check_install_payload(&r, &plain, false);
    run_result_free(&r);

    r = RUN(f, "compose", "install-profile", "--file", signed_path);
    assert_int_equal(r.status, 0);
    check_install_payload(&r, &signed_der, true);
    run_result_free(&r);

    r = RUN(f, "compose", "install-profile", "--file", plain_path, "--sign-cert", cert_path,
            "--sign-key", key_path);
    assert_int_equal(r.status, 0);
    check_install_payload(&r, NULL, true);
    run_result_free(&r);

    r = RUN_STDIN(f, plain_path, "compose", "install-profile", "--file", "-");
    assert_int_equal(r.status, 0);
    check_install_payload(&r, &plain, false);
    run_result_free(&r);

    r = RUN_STDIN(f, junk_path, "compose", "install-profile", "--file", "-");
    assert_int_equal(r.status, 2);
    run_result_free(&r);

    r = RUN(f, "compose", "install-profile", "--file", junk_path);
    assert_int_equal(r.status, 2);
    assert_int_equal(r.out.len, 0);
    assert_non_null(strstr((char *)r.err.data, "profile"));
    run_result_free(&r);

    r = RUN(f, "compose", "install-profile", "--file", missing_file.s);
    assert_int_equal(r.status, 2);
    run_result_free(&r);
    r = RUN(f, "compose", "install-profile");
    assert_int_equal(r.status, 2);
    run_result_free(&r);
    r = RUN(f, "compose", "install-profile", "--file", plain_path, "--sign-cert", cert_path);
    assert_int_equal(r.status, 2);
    run_result_free(&r);

    esim_cert_clear(&signer);
    esim_buf_free(&plain);
    esim_buf_free(&signed_der);
}

static void test_remove_list_information(void **state)
{
    fixture *f = *state;
    esim_cmd_parsed p;
    run_result r = RUN(f, "compose", "remove-profile", "--identifier", "com.example.esim");
    assert_int_equal(r.status, 0);
    parse_out(&r, "RemoveProfile", &p);
    assert_string_equal(plist_get_string_ptr(plist_dict_get_item(p.command, "Identifier"), NULL),
                        "com.example.esim");
    esim_cmd_parsed_free(&p);
    run_result_free(&r);
    r = RUN(f, "compose", "remove-profile");
    assert_int_equal(r.status, 2);
    run_result_free(&r);

    r = RUN(f, "compose", "profile-list", "--managed-only");
    assert_int_equal(r.status, 0);
    parse_out(&r, "ProfileList", &p);
    assert_true(command_flag(&p, "ManagedOnly"));
    esim_cmd_parsed_free(&p);
    run_result_free(&r);

    r = RUN(f, "compose", "device-information", "--query", "ServiceSubscriptions", "--query",
            "OSVersion");
    assert_int_equal(r.status, 0);
    parse_out(&r, "DeviceInformation", &p);
    plist_t q = plist_dict_get_item(p.command, "Queries");
    assert_int_equal(plist_array_get_size(q), 2);
    assert_string_equal(plist_get_string_ptr(plist_array_get_item(q, 0), NULL),
                        "ServiceSubscriptions");
    esim_cmd_parsed_free(&p);
    run_result_free(&r);
    r = RUN(f, "compose", "device-information");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr((char *)r.err.data, "ServiceSubscriptions"));
    run_result_free(&r);
}

static void test_help_teaches(void **state)
{
    fixture *f = *state;
    run_result r = RUN(f, "compose", "--help");
    assert_int_equal(r.status, 0);
    const char *kinds[] = {"refresh-plans",  "erase",        "install-profile",
                           "remove-profile", "profile-list", "device-information",
                           "restrictions",   "windows-csp"};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        assert_non_null(strstr((char *)r.out.data, kinds[k]));
    assert_non_null(strstr((char *)r.out.data, "example"));
    run_result_free(&r);
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        r = RUN(f, "compose", kinds[k], "--help");
        if (r.status != 0 || !strstr((char *)r.out.data, "usage: esim-mdm compose") ||
            !strstr((char *)r.out.data, "example"))
            fail_msg("compose %s --help: status %d", kinds[k], r.status);
        run_result_free(&r);
    }
    r = RUN(f, "compose", "nonsense");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr((char *)r.err.data, "refresh-plans"));
    run_result_free(&r);
    r = RUN(f, "check", "--help");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr((char *)r.out.data, "activation-code"));
    run_result_free(&r);
}

static void test_check(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *what, *value;
        int status;
        const char *says; /* on stdout when valid, stderr otherwise */
    } cases[] = {
        {"eid", "89882119900000000000000000001654", 0, "valid"},
        {"eid", "89882119900000000000000000001600", 2, "check digits"},
        {"eid", "1234", 2, "EID"},
        {"iccid", "8944500102198304826", 0, "valid"},
        {"iccid", "8944500102198304827", 2, "ICCID"},
        {"activation-code", "LPA:1$smdp.example.com$04386-AGYFT-A74Y8-3F815", 0,
         "smdp.example.com"},
        {"activation-code", "LPA:2$smdp.example.com$X", 2, "activation code"},
        {"imei", "123", 2, "eid, iccid or activation-code"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        run_result r = RUN(f, "check", cases[k].what, cases[k].value);
        const esim_buf *text = cases[k].status == 0 ? &r.out : &r.err;
        if (r.status != cases[k].status || !text->data ||
            !strstr((char *)text->data, cases[k].says))
            fail_msg("check %s %s: status %d, said '%s'", cases[k].what, cases[k].value, r.status,
                     text->data ? (char *)text->data : "");
        run_result_free(&r);
    }
    run_result r = RUN(f, "check", "eid");
    assert_int_equal(r.status, 2);
    run_result_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refresh_plans),
        cmocka_unit_test(test_refresh_plans_refusals),
        cmocka_unit_test(test_erase),
        cmocka_unit_test(test_install_profile),
        cmocka_unit_test(test_remove_list_information),
        cmocka_unit_test(test_help_teaches),
        cmocka_unit_test(test_check),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
